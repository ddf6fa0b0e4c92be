from .backbones import CvT, QuickGELU, parse_arch
from .necks import ExtraLevels

__all__ = ['CvT', 'ExtraLevels', 'QuickGELU', 'parse_arch']
