"""Mirrors scripts/xyz_grid.py's AxisOption and axis_options list (what extensions extend).

A1111 loads it as a script module named "xyz_grid.py"; tests register it in
modules.scripts.scripts_data under that module name, as A1111's loader would."""


class AxisOption:
    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare


axis_options = [AxisOption("Nothing", str, lambda p, x, xs: None)]


class Script:  # the xyz_grid Script class; its __module__ is set to "xyz_grid.py" by the test loader
    pass
