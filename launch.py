"""Start a jnas run: `python launch.py --config=configs/NAME.py[:variant] --workdir=DIR`.

Override any config value with `--config.key=value` (a misspelt key is an error).
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/darts_cifar10.py:quick",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for metrics, genotype, plots and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from jnas import parallel, run
    from jnas.errors import UserError

    parallel.maybe_initialize_distributed()
    try:
        run.main(_CONFIG.value, _WORKDIR.value)
    except UserError as e:  # bad input: say what and how to fix it, without a traceback
        logging.error("%s", e)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main)
