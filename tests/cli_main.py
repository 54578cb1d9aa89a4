"""A tflm binary run in the test's own process: the `main` its console script calls, with
its flags parsed as from the command line (no second TensorFlow start-up per run)."""

from absl import flags


def run_main(module, program, *args):
    """Runs `module.main` (a `tflm.cli` module) with `args` as flags; returns its exit
    status (0, or the code of the `SystemExit` it raised). The flags are unparsed after."""
    try:
        flags.FLAGS([program, *args])
        module.main([])
    except SystemExit as e:
        return e.code
    finally:
        flags.FLAGS.unparse_flags()
    return 0
