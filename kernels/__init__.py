from . import reference
from .entmax_attention import entmax_attention
