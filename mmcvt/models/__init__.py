from .backbones import CvT, parse_arch
from .layers import QuickGELU
from .necks import ExtraLevels

__all__ = ['CvT', 'ExtraLevels', 'QuickGELU', 'parse_arch']
