from .cvt import CvT
from .cvt_arch import parse_arch

__all__ = ['CvT', 'parse_arch']
