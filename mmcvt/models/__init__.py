from .backbones import CvT, QuickGELU, parse_arch

__all__ = ['CvT', 'QuickGELU', 'parse_arch']
