"""A guest whose source does not parse: the toolchain must report file, line and error."""

from wit_world import exports


class Guest(exports.Guest):
    def on_load(self) -> None
        pass
