from . import reference
from .entmax import entmax
from .entmax_attention import entmax_attention
