"""The input of every exported graph: ``image``, (batch, 3, height, width)
float32, RGB, 0 to 255, an image as it is decoded; the model's data
preprocessor as graph ops on it; and the model's own prediction on such an
image, the PyTorch reference of a whole model's graph."""
import torch
import torch.nn as nn
from mmengine.structures import BaseDataElement

INPUT_NAME = 'image'


def channels_from_rgb(data_preprocessor):
    """The RGB channel that each channel ``data_preprocessor`` outputs reads:
    [0, 1, 2] when it converts the loaded BGR images to RGB, [2, 1, 0] when
    it keeps them BGR.

    Measured by running it on a probe image: mmengine's preprocessor keeps
    whether it converts the channels in a private attribute only.
    """
    probe = torch.zeros(3, 1, 4)
    for channel in range(3):  # BGR as loaded: column 1 + c lights channel c
        probe[channel, 0, channel + 1] = 255
    with torch.no_grad():
        out = data_preprocessor(
            dict(inputs=[probe], data_samples=[BaseDataElement()]),
            False)['inputs'][0, :, 0, :4].float()
    reads = (out[:, 1:] - out[:, :1]).abs().argmax(1)  # the BGR channel
    return [2 - int(channel) for channel in reads]


class RawImageInput(nn.Module):
    """What a data preprocessor (mmengine's, MMDetection's or
    MMSegmentation's) does to a decoded image, as graph ops: (B, 3, H, W)
    RGB 0..255 -> the channel order and normalisation the model was trained
    with. Loaded images are BGR, so the model sees RGB when its preprocessor
    converts the channels, and BGR when it does not."""

    def __init__(self, data_preprocessor):
        super().__init__()
        channels = channels_from_rgb(data_preprocessor)
        self.channels = None if channels == [0, 1, 2] else channels
        # a preprocessor that does not normalise has no mean and std
        mean = getattr(data_preprocessor, 'mean', None)
        std = getattr(data_preprocessor, 'std', None)
        self.register_buffer(
            'mean',
            torch.zeros(3, 1, 1)
            if mean is None else mean.detach().clone().float().cpu())
        self.register_buffer(
            'std',
            torch.ones(3, 1, 1)
            if std is None else std.detach().clone().float().cpu())

    def forward(self, image):
        if self.channels is not None:
            image = image[:, self.channels]
        return (image - self.mean) / self.std


def random_image(shape, seed=0):
    """A float32 image of 0..255 integers, of ``shape`` (B, 3, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator).float()


def predicted_samples(model, image, sample_class, **meta):
    """``model.predict`` on ``image`` (1, 3, H, W), RGB 0..255, at the
    image's own size, as the model's library runs it on a loaded image:
    uint8 BGR through its data preprocessor.

    Args:
        sample_class (type): The data sample of the model's library
            (``DetDataSample``, ``SegDataSample``).
        **meta: Meta beside ``img_shape`` and ``ori_shape``, the image's
            size (a detector's ``scale_factor``, say).

    Returns:
        list: What ``model.predict`` returns, one sample.
    """
    height, width = image.shape[2:]
    meta = dict(img_shape=(height, width), ori_shape=(height, width), **meta)
    bgr = image[0].flip(0).to(torch.uint8)  # as an image is loaded
    with torch.no_grad():
        data = model.data_preprocessor(
            dict(inputs=[bgr], data_samples=[sample_class(metainfo=meta)]))
        return model.predict(data['inputs'], data['data_samples'])
