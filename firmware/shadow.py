# The node's shadow: what the cloud may change (sample interval, enabled sensors, sleep schedule).
# Deltas are checked in shadow_delta, loaded only when one arrives (RAM).
import json


class Shadow:
    def __init__(self, cfg, path):
        self.path = path
        self.ids = [s["id"] for s in cfg["sensors"]]
        self.version = 0
        self.state = {
            "sample_interval_s": cfg["sample_interval_s"],
            "sensors_enabled": list(self.ids),
            "sleep": {"deep": cfg["deep_sleep"], "uplink_every": cfg["uplink_every"]},
        }
        try:
            with open(path) as f:
                saved = json.load(f)
            st = saved["state"]
            # Written by us after a full check; only guard against a file from another config.
            if [x for x in st["sensors_enabled"] if x not in self.ids] or type(st["sample_interval_s"]) is not int:
                raise ValueError
            self._apply(st)
            self.version = saved["version"]
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            pass  # no or unreadable saved shadow: the config's values stand

    def _apply(self, st):
        for k, v in st.items():
            if k == "sleep":
                self.state["sleep"].update(v)
            else:
                self.state[k] = v

    def on_delta(self, raw):
        """Apply a delta message; returns the report to publish on shadow/update."""
        from shadow_delta import on_delta
        return on_delta(self, raw)

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"version": self.version, "state": self.state}, f)
        import os
        os.rename(tmp, self.path)

    def report(self, errors=None, version=None, extra=None):
        reported = dict(self.state)
        if extra:
            reported.update(extra)
        msg = {"state": {"reported": reported}, "version": self.version if version is None else version}
        if errors:
            msg["rejected"] = errors
        return json.dumps(msg)
