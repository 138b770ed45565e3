"""The networks' shapes: the width multipliers of G's and D's blocks per image size
(BigGAN-PyTorch's tables) and where attention can go. A leaf module: plain data, read by
the models, the config checks and the device policy."""

# image size -> (G: width at 4x4 then each block's output width,
#                D: (output width, downsample) of each block)
ARCHITECTURES = {
    32: ((4, 4, 4, 4), ((4, True), (4, True), (4, False), (4, False))),
    64: ((16, 16, 8, 4, 2), ((1, True), (2, True), (4, True), (8, True), (16, False))),
    128: ((16, 16, 8, 4, 2, 1),
          ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False))),
    256: ((16, 16, 8, 8, 4, 2, 1),
          ((1, True), (2, True), (4, True), (8, True), (8, True), (16, True), (16, False))),
}


def _block_resolutions(image_size: int):
  """(G's, D's) {output resolution: width multiplier} of the blocks after which attention can go."""
  g_mults, d_arch = ARCHITECTURES[image_size]
  g = {4 * 2**i: m for i, m in enumerate(g_mults) if i > 0}
  d, res = {}, image_size
  for mult, down in d_arch:
    if down:
      res //= 2
      d[res] = mult
  return g, d


def attention_resolutions(image_size: int) -> tuple[int, ...]:
  """Resolutions where both G and D have a block output to attend over."""
  g, d = _block_resolutions(image_size)
  return tuple(sorted(set(g) & set(d)))


def attention_multipliers(image_size: int, resolution: int) -> tuple[int, int]:
  """Width multipliers of (G's, D's) attention block at `resolution`."""
  g, d = _block_resolutions(image_size)
  return g[resolution], d[resolution]


