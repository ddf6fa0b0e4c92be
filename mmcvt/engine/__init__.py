from .checkpoint_loader import load_from_local_file

__all__ = ['load_from_local_file']
