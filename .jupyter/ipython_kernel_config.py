# IPython kernel configuration for the book's build and nbval runs; `make setup`
# copies it into the venv (.venv/etc/ipython/), where every kernel started from
# the venv reads it.
#
# Figures: rendered at 150 dpi (matplotlib's default, 100 dpi, makes the wide
# three-panel figures shrink to 6-7 px text at the column width).
#
# The kernels are started by jupyter-book and nbval on 127.0.0.1 over TCP, and
# each one logs "Kernel is running over TCP without encryption ..." into the
# build log. That notice is about untrusted networks; a kernel on the loopback
# of one's own machine is the normal case. This filter drops that one message;
# every other message of the kernel application still reaches the log.
import logging


class DropLoopbackTcpNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Kernel is running over TCP without encryption")


c = get_config()  # noqa: F821 -- defined by IPython when it loads this file
c.IPKernelApp.logging_config = {
    "filters": {"drop_loopback_tcp_notice": {"()": DropLoopbackTcpNotice}},
    "handlers": {"console": {"filters": ["drop_loopback_tcp_notice"]}},
}
c.InlineBackend.rc = {"figure.dpi": 150}
