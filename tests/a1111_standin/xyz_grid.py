"""Mirrors scripts/xyz_grid.py's AxisOption, format_value_add_label (its default label format),
the axis_options list (what extensions extend) and its Script class (a scripts.Script).

A1111 loads it as a script module named "xyz_grid.py"; tests register it in
modules.scripts.scripts_data under that module name, as A1111's loader would. Left out: the
other axes, and the Script's UI and run() (drawing the grid)."""
import modules.scripts as scripts


def format_value_add_label(p, opt, x):
    if type(x) == float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def do_nothing(p, x, xs):
    pass


def format_nothing(p, opt, x):
    return ""


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
]


class Script(scripts.Script):  # its __module__ is set to "xyz_grid.py" by the test loader
    def title(self):
        return "X/Y/Z plot"
