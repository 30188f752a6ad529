from . import reference
from .entmax import entmax
from .entmax_attention import entmax_attention
from .hierarchical import hierarchical_attention, topk_block_attention
