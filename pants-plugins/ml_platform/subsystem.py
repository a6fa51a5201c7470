from __future__ import annotations

from pants.option.option_types import StrOption
from pants.option.subsystem import Subsystem
from pants.util.strutil import help_text


class MLPlatform(Subsystem):
    options_scope = "ml-platform"
    help = help_text("Options shared by every `ml_model` target.")

    runtime = StrOption(
        default="//platform:ml_runtime",
        help=help_text(
            """
            Address of the target holding the runtime code that every model package ships with
            (the standard-library-only side of serving). Every `ml_model` depends on it, so a
            change to the runtime rebuilds every model.
            """
        ),
    )
