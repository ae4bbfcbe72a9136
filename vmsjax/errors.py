"""The one exception type for problems a user can cause and fix."""


class VMSError(Exception):
  """A user-fixable problem: bad path, corrupt file, wrong shape, unknown config value.

  The message names the file or key at fault and says what to do. The CLI prints it
  on one line and exits with status 2.
  """
