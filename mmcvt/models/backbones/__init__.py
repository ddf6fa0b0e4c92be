from .cvt import CvT, QuickGELU

__all__ = ['CvT', 'QuickGELU']
