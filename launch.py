"""Start a jnas run: `python launch.py --config=configs/NAME.py[:variant] --workdir=DIR`.

Override any config value with `--config.key=value` (a misspelt key is an error). Starting again on the
same workdir resumes the run from its newest checkpoint (`config.resume`).

Exit status: 0 done; 1 bad input or a numerical fault (one line, no traceback); 75 stopped by SIGTERM or
SIGINT after saving a checkpoint (run the same command again to resume); 143 or 130 a second signal,
which exits at once without saving.
"""

import logging as python_logging

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/darts_cifar10.py:quick",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for metrics, genotype, plots and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record: python_logging.LogRecord) -> bool:
    """Drop orbax's INFO lines (dozens per checkpoint); its warnings and errors still show."""
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname.replace("\\", "/")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_quiet_orbax)
    from jnas import parallel, run
    from jnas.errors import UserError

    parallel.maybe_initialize_distributed()
    try:
        run.main(_CONFIG.value, _WORKDIR.value)
    except UserError as e:  # bad input: say what and how to fix it, without a traceback
        logging.error("%s", e)
        raise SystemExit(f"error: {e}") from None
    except Exception as e:
        # Imported here, not above: jnas.loop (orbax) costs a second that a config error need not wait.
        from jnas import loop

        if not isinstance(e, loop.Preempted):
            raise  # a bug: keep the traceback
        logging.warning("%s", e)
        raise SystemExit(loop.EXIT_PREEMPTED) from None


if __name__ == "__main__":
    app.run(main)
