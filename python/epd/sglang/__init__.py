"""epd as an SGLang (0.5.23) MoE token dispatcher, out of tree: SGLANG_EPD_MODE=normal|low_latency plus
--moe-a2a-backend deepep; the `sglang.srt.plugins` entry point `epd` (epd.sglang.plugin:register) installs
it. Importing this package imports SGLang's dispatcher base classes. See docs/ENGINES.md."""
from .dispatcher import MODES, EpdDispatcher, EpdTboDispatcher
from .plugin import register, selected_mode

__all__ = ["MODES", "EpdDispatcher", "EpdTboDispatcher", "register", "selected_mode"]
