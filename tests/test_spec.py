"""`DATASET:SPLIT[+SPLIT...]` specs: one parser for `vmsjax data export`, `vmsjax study` and
experiments/paper.py."""

import pytest

from vmsjax import cli
from vmsjax.data import spec
from vmsjax.errors import VMSError
from vmsjax.studies import sources


@pytest.mark.parametrize(
  "text, expected",
  [
    ("synthetic:test", ("synthetic", ("test",))),
    ("vischema:train+test", ("vischema", ("train", "test"))),
    ("lamem:train+val+test", ("lamem", ("train", "val", "test"))),
    ("lamem/subset10k:test", ("lamem/subset10k", ("test",))),
    # Cut at the first colon: a tfds slice keeps its own.
    ("synthetic:test[:32]", ("synthetic", ("test[:32]",))),
    ("synthetic:train[:10%]+test[5:]", ("synthetic", ("train[:10%]", "test[5:]"))),
  ],
)
def test_parse(text, expected):
  assert spec.parse(text) == expected


@pytest.mark.parametrize(
  "text", ["synthetic", "synthetic:", ":test", "", "synthetic:train+", "synthetic:+test", "a:b++c"]
)
def test_malformed_spec_is_one_line_naming_it(text):
  with pytest.raises(VMSError) as e:
    spec.parse(text, "--data")
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"--data {text!r}: expected DATASET:SPLIT")
  assert "synthetic:train+test" in message  # the expected form, with an example


def test_single_split():
  assert spec.parse("synthetic:test", single=True) == ("synthetic", ("test",))
  with pytest.raises(VMSError, match=r"^'synthetic:train\+test': expected DATASET:SPLIT, e.g."):
    spec.parse("synthetic:train+test", single=True)


def test_open_spec_reads_several_splits_as_one(synthetic_data_dir):
  test = sources.open_spec("synthetic:test", synthetic_data_dir)
  both = sources.open_spec("synthetic:train+test", synthetic_data_dir, "--truth")
  assert len(both) == 640 + len(test) and both.split == "train+test"
  assert both.ids()[-len(test) :] == tuple(test.ids())
  with pytest.raises(VMSError, match="--truth 'synthetic'"):
    sources.open_spec("synthetic", synthetic_data_dir, "--truth")


def test_cli_data_export_refuses_a_bad_spec(capsys, tmp_path):
  for text in ("synthetic", "synthetic:train+test"):
    code = cli.main(["data", "export", text, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{text!r}: expected DATASET:SPLIT, e.g. synthetic:test" in err
  assert not (tmp_path / "x").exists()
