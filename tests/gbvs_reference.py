"""A literal, slow numpy transliteration of Jonathan Harel's MATLAB GBVS (default parameters).

Written from the MATLAB/C sources of the GBVS package (read in the public copy
sergeyk/vislab, matlab/gbvs/, cross-checked against roloyolanavarro/compOcular and
NUS-VIP/predicting-human-gaze-beyond-pixels), not from vmsjax/saliency.py, to serve as an
independent reference for it. Float64 as in MATLAB, except inside mySubsample, which
keeps the mex's float storage; loops where the MATLAB code loops; MATLAB's 1-based
indices kept where the code computes with them (imresize, attenuateBordersGBVS, the
lookup table). The MATLAB built-ins the package calls (imresize, mat2gray, conv2,
normpdf, round) follow the MathWorks code / documentation. Each function names the file
it transliterates.

  gbvs(img_uint8) -> out.master_map_resized, float64 (H, W)

Only the path taken with `makeGBVSParams` defaults is written out: channels 'DIO',
levels [2 3 4], salmapmaxsize 32, activationType 1, normalizationType 1,
multilevels [], cyclic_type 2, blurfrac 0.02, unCenterBias 0, all weights 1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import convolve2d

# makeGBVSParams.m
SALMAPMAXSIZE = 32
LEVELS = [2, 3, 4]
GABORANGLES = [0, 45, 90, 135]
SIGMA_FRAC_ACT = 0.15
TOL = 0.0001
BLURFRAC = 0.02

# imresize.m's rule for samples beyond the edges: "mirror" in the MathWorks code of the
# last decade (aux = [1:in_length, in_length:-1:1]), "clamp" in the 2006-2013 releases
# (indices = min(max(1, indices), in_length)). Which one the comparison maps were made
# with depends on the MATLAB release; vmsjax.saliency uses "mirror".
IMRESIZE_EDGES = "mirror"


def matlab_round(x):
  """MATLAB round: halves away from zero."""
  x = np.asarray(x, np.float64)
  return np.sign(x) * np.floor(np.abs(x) + 0.5)


# --- MATLAB built-ins used by the code --------------------------------------------------


def mat2gray(a):
  """mat2gray.m, default limits [min(A(:)) max(A(:))]."""
  a = np.asarray(a, np.float64)
  lo, hi = a.min(), a.max()
  if hi == lo:  # "Constant Image"
    i = a.copy()
  else:
    delta = 1 / (hi - lo)
    i = delta * a - lo * delta  # imlincomb(delta, A, -limits(1)*delta, 'double')
  return np.maximum(0, np.minimum(i, 1))


def _cubic(x):
  """imresize.m: cubic()."""
  absx = np.abs(x)
  absx2 = absx**2
  absx3 = absx**3
  return (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1) + (
    -0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2
  ) * ((1 < absx) & (absx <= 2))


def _contributions(in_length, out_length, scale, kernel_width=4.0, antialiasing=True):
  """imresize.m: contributions(); returns weights and 1-based indices, (out_length, P)."""
  if scale < 1 and antialiasing:

    def h(x):
      return scale * _cubic(scale * x)

    kernel_width = kernel_width / scale
  else:
    h = _cubic
  x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
  u = x / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - kernel_width / 2)
  p = int(math.ceil(kernel_width)) + 2
  indices = left + np.arange(p)[None, :]
  weights = h(u - indices)
  weights = weights / weights.sum(axis=1, keepdims=True)
  if IMRESIZE_EDGES == "mirror":  # "Mirror out-of-bounds indices" (later releases)
    aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    indices = aux[np.mod(indices.astype(np.int64) - 1, len(aux))]
  else:  # "Clamp out-of-range indices; has the effect of replicating end-points" (<= 2013)
    indices = np.minimum(np.maximum(1, indices), in_length).astype(np.int64)
  kill = ~np.any(weights, axis=0)
  if kill.any():
    weights = weights[:, ~kill]
    indices = indices[:, ~kill]
  return weights, indices


def _resize_along_dim(a, dim, weights, indices):
  """imresize.m: resizeAlongDim (the imresizemex loop): out(k) = sum_p w(k,p) in(ind(k,p))."""
  a = np.moveaxis(a, dim, 0)
  out = np.zeros((weights.shape[0],) + a.shape[1:])
  for k in range(weights.shape[0]):
    for p in range(weights.shape[1]):
      out[k] += weights[k, p] * a[indices[k, p] - 1]
  return np.moveaxis(out, 0, dim)


def imresize(a, out_size):
  """imresize(A, [numrows numcols], 'bicubic'), double input, antialiasing on."""
  a = np.asarray(a, np.float64)
  scale = [out_size[0] / a.shape[0], out_size[1] / a.shape[1]]
  order = np.argsort(scale, kind="stable")  # dimensionOrder: smallest scale first
  for dim in order:
    w, ind = _contributions(a.shape[dim], out_size[dim], scale[dim])
    a = _resize_along_dim(a, dim, w, ind)
  return a


def normpdf(x, mu, sigma):
  return math.exp(-0.5 * ((x - mu) / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)


# --- saltoolbox/ and util/ --------------------------------------------------------------


def _f32(x):
  return np.asarray(x, np.float32)


def _d(x):
  return np.asarray(x, np.float32).astype(np.float64)


def _low_pass6_dec(src):
  """mySubsample.cc lowPass6xDecX / lowPass6yDecY along axis 0 of a float32 array (n >= 4).

  The C code adds pairs of floats in float, then multiplies by double constants, so the
  rest is double, and stores the result as float; so does this.
  """
  n = src.shape[0]
  out = []
  # first point: kernel [10 10 5 1] / 26
  out.append(_f32(((_d(src[0] + src[1])) * 10.0 + _d(src[2]) * 5.0 + _d(src[3])) / 26.0))
  x = 0
  while x < n - 5:
    s = src[x:]
    out.append(_f32((_d(s[1] + s[4]) * 5.0 + _d(s[2] + s[3]) * 10.0 + _d(s[0] + s[5])) / 32.0))
    x += 2
  s = src[x:]
  if x == n - 5:  # kernel [1 5 10 10 5] / 31
    out.append(_f32((_d(s[1] + s[4]) * 5.0 + _d(s[2] + s[3]) * 10.0 + _d(s[0])) / 31.0))
  else:  # kernel [1 5 10 10] / 26
    out.append(_f32((_d(s[0]) + _d(s[1]) * 5.0 + _d(s[2] + s[3]) * 10.0) / 26.0))
  return np.stack(out)


def mySubsample(img):
  """saltoolbox/mySubsample.cc: halve width then height; sides <= 10 returned unchanged."""
  img = np.asarray(img, np.float64)
  h, w = img.shape
  if w > 10 and h > 10:
    imgf = img.astype(np.float32)  # double2float
    decx = _low_pass6_dec(imgf.T).T  # lowPass6xDecX: along columns (x)
    decxy = _low_pass6_dec(decx)  # lowPass6yDecY: along rows (y)
    return decxy.astype(np.float32).astype(np.float64)  # float2double
  return img.copy()


def attenuateBordersGBVS(data, borderSize):
  """saltoolbox/attenuateBordersGBVS.m."""
  result = np.array(data, np.float64)
  dsz = result.shape
  if borderSize * 2 > dsz[0]:
    borderSize = math.floor(dsz[0] / 2)
  if borderSize * 2 > dsz[1]:
    borderSize = math.floor(dsz[1] / 2)
  if borderSize < 1:
    return result
  bs = np.arange(1, borderSize + 1)
  coeffs = bs / (borderSize + 1)
  rec = np.tile(coeffs[:, None], (1, dsz[1]))
  result[bs - 1, :] = result[bs - 1, :] * rec
  rng = dsz[0] - bs + 1
  result[rng - 1, :] = result[rng - 1, :] * rec
  rec = np.tile(coeffs[None, :], (dsz[0], 1))
  result[:, bs - 1] = result[:, bs - 1] * rec
  rng = dsz[1] - bs + 1
  result[:, rng - 1] = result[:, rng - 1] * rec
  return result


def makeGaborFilterGBVS(stddev, elongation, filterSize, filterPeriod, angle, phase):
  """saltoolbox/makeGaborFilterGBVS.m (makeDisc = 0)."""
  major_stddev = stddev
  minor_stddev = major_stddev * elongation
  max_stddev = max(major_stddev, minor_stddev)
  sz = filterSize
  if sz == -1:
    sz = math.ceil(max_stddev * math.sqrt(10))
  else:
    sz = math.floor(sz / 2)
  psi = math.pi / 180 * phase
  rtDeg = math.pi / 180 * angle
  omega = 2 * math.pi / filterPeriod
  co = math.cos(rtDeg)
  si = -math.sin(rtDeg)
  major_sigq = 2 * major_stddev**2
  minor_sigq = 2 * minor_stddev**2
  vec = np.arange(-sz, sz + 1, dtype=np.float64)
  vlen = len(vec)
  vco = vec * co
  vsi = vec * si
  major = np.tile(vco[:, None], (1, vlen)) + np.tile(vsi[None, :], (vlen, 1))
  major2 = major**2
  minor = np.tile(vsi[:, None], (1, vlen)) - np.tile(vco[None, :], (vlen, 1))
  minor2 = minor**2
  result = np.cos(omega * major + psi) * np.exp(-major2 / major_sigq - minor2 / minor_sigq)
  filt = result - result.mean()
  return filt / math.sqrt((filt**2).sum())


def padImage(a, vpad, hpad):
  """util/padImage.m: replicate the edge rows, columns and corners."""
  u = np.tile(a[0:1, :], (vpad, 1))
  b = np.tile(a[-1:, :], (vpad, 1))
  l = np.tile(a[:, 0:1], (1, hpad))  # noqa: E741
  r = np.tile(a[:, -1:], (1, hpad))
  ul = np.full((vpad, hpad), a[0, 0])
  ur = np.full((vpad, hpad), a[0, -1])
  bl = np.full((vpad, hpad), a[-1, 0])
  br = np.full((vpad, hpad), a[-1, -1])
  return np.block([[ul, u, ur], [l, a, r], [bl, b, br]])


def myconv2(a, b):
  """util/myconv2.m: conv2(padImage(a), b, 'same'), cropped back to size(a)."""
  b = np.atleast_2d(b)
  vpad = math.ceil((b.shape[0] - 1) / 2)
  hpad = math.ceil((b.shape[1] - 1) / 2)
  ap = padImage(a, vpad, hpad)
  cp = convolve2d(ap, b, mode="same")  # odd kernels: same centring as MATLAB conv2
  return cp[vpad : vpad + a.shape[0], hpad : hpad + a.shape[1]]


def mygausskernel(std, nstds):
  """util/mygausskernel.m: a row vector."""
  maxi = int(matlab_round(std * nstds))
  a = np.zeros(1 + maxi)
  a[0] = normpdf(0, 0, std)
  for i in range(1, maxi + 1):
    a[i] = normpdf(i, 0, std)
  k = np.concatenate([a[:0:-1], a])
  return (k / k.sum())[None, :]


# rgb2dkl.m: lut_rgb, as written there (row k is the linear R, G, B of level k - 1).
_LUT_RGB_TEXT = """
0.024935, 0.0076954, 0.042291
0.024974, 0.0077395, 0.042346
0.025013, 0.0077836, 0.042401
0.025052, 0.0078277, 0.042456
0.025091, 0.0078717, 0.042511
0.02513, 0.0079158, 0.042566
0.025234, 0.007992, 0.042621
0.025338, 0.0080681, 0.042676
0.025442, 0.0081443, 0.042731
0.025545, 0.0082204, 0.042786
0.025649, 0.0082966, 0.042841
0.025747, 0.0084168, 0.042952
0.025844, 0.0085371, 0.043062
0.025942, 0.0086573, 0.043172
0.026039, 0.0087776, 0.043282
0.026136, 0.0088978, 0.043392
0.026234, 0.0090581, 0.043502
0.026331, 0.0092184, 0.043612
0.026429, 0.0093788, 0.043722
0.026526, 0.0095391, 0.043833
0.026623, 0.0096994, 0.043943
0.026818, 0.0099198, 0.044141
0.027013, 0.01014, 0.044339
0.027208, 0.010361, 0.044537
0.027403, 0.010581, 0.044736
0.027597, 0.010802, 0.044934
0.027857, 0.010994, 0.04522
0.028117, 0.011186, 0.045507
0.028377, 0.011379, 0.045793
0.028636, 0.011571, 0.046079
0.028896, 0.011764, 0.046366
0.029104, 0.012068, 0.046652
0.029312, 0.012373, 0.046938
0.029519, 0.012677, 0.047225
0.029727, 0.012982, 0.047511
0.029935, 0.013287, 0.047797
0.030273, 0.013663, 0.048326
0.03061, 0.01404, 0.048855
0.030948, 0.014417, 0.049383
0.031286, 0.014794, 0.049912
0.031623, 0.01517, 0.050441
0.032156, 0.015707, 0.051035
0.032688, 0.016244, 0.05163
0.033221, 0.016782, 0.052225
0.033753, 0.017319, 0.052819
0.034286, 0.017856, 0.053414
0.034961, 0.018693, 0.054493
0.035636, 0.019531, 0.055573
0.036312, 0.020369, 0.056652
0.036987, 0.021206, 0.057731
0.037662, 0.022044, 0.058811
0.038623, 0.023246, 0.060044
0.039584, 0.024449, 0.061278
0.040545, 0.025651, 0.062511
0.041506, 0.026854, 0.063744
0.042468, 0.028056, 0.064978
0.043857, 0.029659, 0.066806
0.045247, 0.031263, 0.068634
0.046636, 0.032866, 0.070463
0.048026, 0.034469, 0.072291
0.049416, 0.036072, 0.074119
0.051221, 0.038156, 0.076476
0.053026, 0.04024, 0.078833
0.054831, 0.042325, 0.081189
0.056636, 0.044409, 0.083546
0.058442, 0.046493, 0.085903
0.06039, 0.048737, 0.087996
0.062338, 0.050982, 0.090088
0.064286, 0.053226, 0.092181
0.066234, 0.055471, 0.094273
0.068182, 0.057715, 0.096366
0.070519, 0.06012, 0.098921
0.072857, 0.062525, 0.10148
0.075195, 0.06493, 0.10403
0.077532, 0.067335, 0.10659
0.07987, 0.069739, 0.10914
0.082208, 0.072345, 0.11176
0.084545, 0.07495, 0.11438
0.086883, 0.077555, 0.117
0.089221, 0.08016, 0.11963
0.091558, 0.082766, 0.12225
0.094026, 0.085611, 0.12533
0.096494, 0.088457, 0.12841
0.098961, 0.091303, 0.1315
0.10143, 0.094148, 0.13458
0.1039, 0.096994, 0.13767
0.10688, 0.10028, 0.14119
0.10987, 0.10357, 0.14471
0.11286, 0.10685, 0.14824
0.11584, 0.11014, 0.15176
0.11883, 0.11343, 0.15529
0.12208, 0.11695, 0.15903
0.12532, 0.12048, 0.16278
0.12857, 0.12401, 0.16652
0.13182, 0.12754, 0.17026
0.13506, 0.13106, 0.17401
0.1387, 0.13499, 0.17819
0.14234, 0.13892, 0.18238
0.14597, 0.14285, 0.18656
0.14961, 0.14677, 0.19075
0.15325, 0.1507, 0.19493
0.15727, 0.15519, 0.19956
0.1613, 0.15968, 0.20419
0.16532, 0.16417, 0.20881
0.16935, 0.16866, 0.21344
0.17338, 0.17315, 0.21806
0.17805, 0.17796, 0.22291
0.18273, 0.18277, 0.22775
0.1874, 0.18758, 0.2326
0.19208, 0.19238, 0.23744
0.19675, 0.19719, 0.24229
0.20156, 0.20224, 0.24758
0.20636, 0.20729, 0.25286
0.21117, 0.21234, 0.25815
0.21597, 0.21739, 0.26344
0.22078, 0.22244, 0.26872
0.2261, 0.22806, 0.27423
0.23143, 0.23367, 0.27974
0.23675, 0.23928, 0.28524
0.24208, 0.24489, 0.29075
0.2474, 0.2505, 0.29626
0.25299, 0.25651, 0.3022
0.25857, 0.26253, 0.30815
0.26416, 0.26854, 0.3141
0.26974, 0.27455, 0.32004
0.27532, 0.28056, 0.32599
0.28156, 0.28697, 0.33238
0.28779, 0.29339, 0.33877
0.29403, 0.2998, 0.34515
0.30026, 0.30621, 0.35154
0.30649, 0.31263, 0.35793
0.3126, 0.31904, 0.36388
0.3187, 0.32545, 0.36982
0.32481, 0.33186, 0.37577
0.33091, 0.33828, 0.38172
0.33701, 0.34469, 0.38767
0.34325, 0.3511, 0.39361
0.34948, 0.35752, 0.39956
0.35571, 0.36393, 0.40551
0.36195, 0.37034, 0.41145
0.36818, 0.37675, 0.4174
0.37429, 0.38317, 0.42313
0.38039, 0.38958, 0.42885
0.38649, 0.39599, 0.43458
0.3926, 0.4024, 0.44031
0.3987, 0.40882, 0.44604
0.40494, 0.41523, 0.45198
0.41117, 0.42164, 0.45793
0.4174, 0.42806, 0.46388
0.42364, 0.43447, 0.46982
0.42987, 0.44088, 0.47577
0.43623, 0.44689, 0.48128
0.4426, 0.45291, 0.48678
0.44896, 0.45892, 0.49229
0.45532, 0.46493, 0.4978
0.46169, 0.47094, 0.5033
0.46792, 0.47695, 0.50837
0.47416, 0.48297, 0.51344
0.48039, 0.48898, 0.5185
0.48662, 0.49499, 0.52357
0.49286, 0.501, 0.52863
0.49805, 0.50701, 0.53392
0.50325, 0.51303, 0.53921
0.50844, 0.51904, 0.54449
0.51364, 0.52505, 0.54978
0.51883, 0.53106, 0.55507
0.52442, 0.53667, 0.55969
0.53, 0.54228, 0.56432
0.53558, 0.5479, 0.56894
0.54117, 0.55351, 0.57357
0.54675, 0.55912, 0.57819
0.55182, 0.56433, 0.58304
0.55688, 0.56954, 0.58789
0.56195, 0.57475, 0.59273
0.56701, 0.57996, 0.59758
0.57208, 0.58517, 0.60242
0.57675, 0.58998, 0.60639
0.58143, 0.59479, 0.61035
0.5861, 0.5996, 0.61432
0.59078, 0.60441, 0.61828
0.59545, 0.60922, 0.62225
0.60065, 0.61403, 0.62709
0.60584, 0.61884, 0.63194
0.61104, 0.62365, 0.63678
0.61623, 0.62846, 0.64163
0.62143, 0.63327, 0.64648
0.62584, 0.63808, 0.65088
0.63026, 0.64289, 0.65529
0.63468, 0.6477, 0.65969
0.63909, 0.65251, 0.6641
0.64351, 0.65731, 0.6685
0.64857, 0.66132, 0.67269
0.65364, 0.66533, 0.67687
0.6587, 0.66934, 0.68106
0.66377, 0.67335, 0.68524
0.66883, 0.67735, 0.68943
0.67273, 0.68136, 0.69361
0.67662, 0.68537, 0.6978
0.68052, 0.68938, 0.70198
0.68442, 0.69339, 0.70617
0.68831, 0.69739, 0.71035
0.69221, 0.7022, 0.7141
0.6961, 0.70701, 0.71784
0.7, 0.71182, 0.72159
0.7039, 0.71663, 0.72533
0.70779, 0.72144, 0.72907
0.71169, 0.72505, 0.73348
0.71558, 0.72866, 0.73789
0.71948, 0.73226, 0.74229
0.72338, 0.73587, 0.7467
0.72727, 0.73948, 0.7511
0.73247, 0.74349, 0.75507
0.73766, 0.74749, 0.75903
0.74286, 0.7515, 0.763
0.74805, 0.75551, 0.76696
0.75325, 0.75952, 0.77093
0.75714, 0.76393, 0.77599
0.76104, 0.76834, 0.78106
0.76494, 0.77275, 0.78612
0.76883, 0.77715, 0.79119
0.77273, 0.78156, 0.79626
0.77792, 0.78677, 0.80132
0.78312, 0.79198, 0.80639
0.78831, 0.79719, 0.81145
0.79351, 0.8024, 0.81652
0.7987, 0.80762, 0.82159
0.80519, 0.81283, 0.82687
0.81169, 0.81804, 0.83216
0.81818, 0.82325, 0.83744
0.82468, 0.82846, 0.84273
0.83117, 0.83367, 0.84802
0.83636, 0.83888, 0.85286
0.84156, 0.84409, 0.85771
0.84675, 0.8493, 0.86256
0.85195, 0.85451, 0.8674
0.85714, 0.85972, 0.87225
0.86364, 0.86613, 0.87819
0.87013, 0.87255, 0.88414
0.87662, 0.87896, 0.89009
0.88312, 0.88537, 0.89604
0.88961, 0.89178, 0.90198
0.8961, 0.8986, 0.90947
0.9026, 0.90541, 0.91696
0.90909, 0.91222, 0.92445
0.91558, 0.91904, 0.93194
0.92208, 0.92585, 0.93943
0.92857, 0.93307, 0.94493
0.93506, 0.94028, 0.95044
0.94156, 0.94749, 0.95595
0.94805, 0.95471, 0.96145
0.95455, 0.96192, 0.96696
0.96364, 0.96954, 0.97357
0.97273, 0.97715, 0.98018
0.98182, 0.98477, 0.98678
0.99091, 0.99238, 0.99339
1, 1, 1
"""
LUT_RGB = np.array(_LUT_RGB_TEXT.replace(",", " ").split(), np.float64).reshape(256, 3)


def rgb2dkl(rgb):
  """util/rgb2dkl.m (rgb2dkl_v), double input: lookup row ceil(v * 255) clamped to 1..256."""
  lut_rgb = LUT_RGB
  lms0 = [34.918538957799996, 19.314796676499999, 0.585610818500000]
  m = [18.32535, 44.60077, 7.46216, 4.09544, 28.20135, 6.66066, 0.02114, 0.10325, 1.05258]
  fac = 1.0 / (lms0[0] + lms0[1])
  nrm = math.sqrt(lms0[0] * lms0[0] + lms0[1] * lms0[1])
  mm = [
    math.sqrt(3.0) * fac,
    math.sqrt(3.0) * fac,
    0.0,
    nrm / lms0[0] * fac,
    -nrm / lms0[1] * fac,
    0.0,
    -fac,
    -fac,
    (lms0[0] + lms0[1]) / lms0[2] * fac,
  ]
  idx = np.ceil(rgb * 255)
  idx[idx < 1] = 1
  idx[idx > 256] = 256
  idx = idx.astype(np.int64)
  aa1 = lut_rgb[idx[..., 0] - 1, 0]
  aa2 = lut_rgb[idx[..., 1] - 1, 1]
  aa3 = lut_rgb[idx[..., 2] - 1, 2]
  lms1 = m[0] * aa1 + m[1] * aa2 + m[2] * aa3 - lms0[0]
  lms2 = m[3] * aa1 + m[4] * aa2 + m[5] * aa3 - lms0[1]
  lms3 = m[6] * aa1 + m[7] * aa2 + m[8] * aa3 - lms0[2]
  dkl1 = mm[0] * lms1 + mm[1] * lms2 + mm[2] * lms3
  dkl2 = mm[3] * lms1 + mm[4] * lms2 + mm[5] * lms3
  dkl3 = mm[6] * lms1 + mm[7] * lms2 + mm[8] * lms3
  return np.stack([dkl1 * 0.5774, dkl2 * 2.7525, dkl3 * 0.4526], axis=-1)


# --- algsrc/ ---------------------------------------------------------------------------


def simpledistance(dim):
  """algsrc/simpledistance.m, cyclic_type 2: squared distances, column-major node index."""
  n = dim[0] * dim[1]
  ii, jj = np.unravel_index(np.arange(n), dim, order="F")  # ix = indexmatrix(dim)
  return (ii[:, None] - ii[None, :]) ** 2.0 + (jj[:, None] - jj[None, :]) ** 2.0


def graphsalinit(map_size):
  """algsrc/graphsalinit.m with multilevels [], inter/intra type 2, cyclic_type 2.

  One lattice: connectMatrix is all ones; distanceMatrix is simpledistance * d(1)/mapsize
  = simpledistance; D = cx .* dx.
  """
  return {"D": simpledistance(map_size)}


def principalEigenvectorRaw(markovA, tol):
  """algsrc/principalEigenvectorRaw.m."""
  D = markovA.shape[0]
  df = 1.0
  v = np.ones(D) / D
  oldv = v
  oldoldv = v
  it = 0
  while df > tol:
    oldv = v
    oldoldv = oldv
    v = np.einsum("ij,j->i", markovA, v)  # markovA * v (einsum: no BLAS threads to wait on)
    df = np.linalg.norm(oldv - v)
    it += 1
    s = v.sum()
    if s >= 0 and s < np.inf:
      continue
    v = oldoldv
    break
  return v / v.sum(), it


def graphsalapply_algtype2(A, frame, sigma_frac, tol):
  """algsrc/graphsalapply.m, algtype 2, num_iters 1, multilevels []."""
  # formMapPyramid(A, []): mat2gray, + 1e-12 if all zero
  Apyr = mat2gray(A)
  if Apyr.max() == 0:
    Apyr = Apyr + 1e-12
  sig = sigma_frac * np.mean(A.shape)
  Dw = np.exp(-1 * frame["D"] / (2 * sig**2))
  AL = Apyr.reshape(-1, order="F")  # mexArrangeLinear: column-major
  # mexAssignWeights algtype 2: MM(r, c) = D(r, c) * |AL(r) - AL(c)|
  MM = Dw * np.abs(AL[:, None] - AL[None, :])
  # mexColumnNormalize (0/0 gives NaN, as in the C code)
  with np.errstate(invalid="ignore", divide="ignore"):
    MM = MM / MM.sum(axis=0, keepdims=True)
  AL, _ = principalEigenvectorRaw(MM, tol)
  return AL.reshape(A.shape, order="F")  # mexSumOverScales (one scale) + reshape


# --- gbvs.m ----------------------------------------------------------------------------


def initGBVS(imgsize):
  """algsrc/initGBVS.m."""
  h, w = imgsize[0], imgsize[1]
  scale = SALMAPMAXSIZE / max(w, h)
  salmapsize = tuple(int(v) for v in matlab_round(np.array([h, w]) * scale))
  grframe = graphsalinit(salmapsize)
  gaborFilters = []
  for theta in GABORANGLES:
    gaborFilters.append(
      {
        "g0": makeGaborFilterGBVS(2, 2, -1, math.pi, theta, 0),
        "g90": makeGaborFilterGBVS(2, 2, -1, math.pi, theta, 90),
      }
    )
  return grframe, {"salmapsize": salmapsize, "gaborFilters": gaborFilters}


def getFeatureMaps(img, param):
  """util/getFeatureMaps.m with channels D, I, O (directory order: D_, I_, O_)."""
  maxcomputelevel = max(LEVELS)
  levels = list(range(2, maxcomputelevel + 1))
  is_color = img.ndim == 3 and img.shape[2] == 3
  if is_color:
    imgr, imgg, imgb = img[:, :, 0], img[:, :, 1], img[:, :, 2]
    imgi = np.maximum(np.maximum(imgr, imgg), imgb)  # mygetrgb.m
  else:
    imgi = img
  imgL, imgR, imgG, imgB = {}, {}, {}, {}
  imgL[1] = mySubsample(imgi)
  if is_color:
    imgR[1], imgG[1], imgB[1] = mySubsample(imgr), mySubsample(imgg), mySubsample(imgb)
  for i in levels:
    imgL[i] = mySubsample(imgL[i - 1])
    if is_color:
      imgR[i] = mySubsample(imgR[i - 1])
      imgG[i] = mySubsample(imgG[i - 1])
      imgB[i] = mySubsample(imgB[i - 1])
    if imgL[i].shape[0] < 3 or imgL[i].shape[1] < 3:
      levels = list(range(2, i + 1))
      break

  def D_dklcolor(lev, ti):
    rgb = np.stack([imgR[lev], imgG[lev], imgB[lev]], axis=-1)
    return rgb2dkl(rgb)[:, :, ti - 1]

  def I_intensity(lev, ti):
    return imgL[lev]

  def O_orientation(lev, ti):
    g = param["gaborFilters"][ti - 1]
    f0 = myconv2(imgL[lev], g["g0"])
    f90 = myconv2(imgL[lev], g["g90"])
    return attenuateBordersGBVS(np.abs(f0) + np.abs(f90), 13)

  channels = []
  if is_color:
    channels.append(("dklcolor", D_dklcolor, 3))
  channels.append(("intensity", I_intensity, 1))
  channels.append(("orientation", O_orientation, len(GABORANGLES)))
  rawfeatmaps = {}
  for name, func, numtypes in channels:
    val = {}
    for ti in range(1, numtypes + 1):
      val[ti] = {}
      for lev in levels:
        val[ti][lev] = imresize(func(lev, ti), param["salmapsize"])
    rawfeatmaps[name] = {"numtypes": numtypes, "weight": 1.0, "val": val}
  return rawfeatmaps


def gbvs(img):
  """gbvs.m with makeGBVSParams defaults: returns out.master_map_resized (float64)."""
  img = np.asarray(img)
  if img.dtype == np.uint8:
    img = img.astype(np.float64) / 255
  grframe, param = initGBVS(img.shape)
  rawfeatmaps = getFeatureMaps(img, param)
  # STEP 2: activation (graphsalapply algtype 2)
  allmaps = []
  for fmapi, (_, obj) in enumerate(rawfeatmaps.items()):
    for typei in range(1, obj["numtypes"] + 1):
      for lev in LEVELS:
        act = graphsalapply_algtype2(obj["val"][typei][lev], grframe, SIGMA_FRAC_ACT, TOL)
        allmaps.append((fmapi, act))
  # STEP 3: normalizationType 1 -> graphsalapply algtype 4: A .^ 1.5
  norm_maps = [(fmapi, act**1.5) for fmapi, act in allmaps]
  # STEP 4: sum within each channel (no division)
  cmaps = [0.0] * len(rawfeatmaps)
  for fmapi, m in norm_maps:
    cmaps[fmapi] = cmaps[fmapi] + m
  # STEP 5: weighted sum across channels
  master_map = 0.0
  for fmapi, obj in enumerate(rawfeatmaps.values()):
    master_map = master_map + cmaps[fmapi] * obj["weight"]
  master_map = attenuateBordersGBVS(master_map, 4)
  master_map = mat2gray(master_map)
  # STEP 6: blur
  k = mygausskernel(max(master_map.shape) * BLURFRAC, 2)
  master_map = myconv2(myconv2(master_map, k), k.T)
  master_map = mat2gray(master_map)
  # unCenterBias = 0: skipped
  return mat2gray(imresize(master_map, [img.shape[0], img.shape[1]]))
