"""Every test runs on 4 simulated CPU devices, so data parallelism is exercised everywhere.

XLA's CPU backend spends most of a test's time compiling; the tests trade the generated code's speed
for compile speed (the computed values do not change), and share compiled programs between tests and
the launch.py subprocesses through JAX's persistent compilation cache.
"""
import os
import tempfile

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jnas-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
