# The node's shadow: what the cloud may change (sample interval, enabled sensors, sleep schedule).
# A delta {"version": n, "state": {...}} is applied whole or not at all: any malformed or
# out-of-range key rejects it and the reasons go back on shadow/update with the current state.
import json

SETTABLE = ("sample_interval_s", "sensors_enabled", "sleep")


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
        self.dirty = False  # reported state not yet sent
        try:
            with open(path) as f:
                saved = json.load(f)
            errors = self._check(saved.get("state"))
            if not errors:
                self._apply(saved["state"])
                self.version = saved.get("version", 0)
        except (OSError, ValueError, AttributeError, TypeError):
            pass  # no or unreadable saved shadow: the config's values stand

    def _check(self, st):
        if type(st) is not dict or not st:
            return {"state": "must be a non-empty object"}
        errors = {}
        for k, v in st.items():
            if k == "sample_interval_s":
                if type(v) is not int or not 10 <= v <= 86400:
                    errors[k] = "must be an integer from 10 to 86400"
            elif k == "sensors_enabled":
                if type(v) is not list or any(type(x) is not str or x not in self.ids for x in v) \
                        or len(set(v)) != len(v):
                    errors[k] = "must be a list of distinct sensor ids from: " + ",".join(self.ids)
            elif k == "sleep":
                if type(v) is not dict or not v:
                    errors[k] = "must be an object with deep and/or uplink_every"
                    continue
                for sk, sv in v.items():
                    if sk == "deep":
                        if type(sv) is not bool:
                            errors["sleep.deep"] = "must be true or false"
                    elif sk == "uplink_every":
                        if type(sv) is not int or not 1 <= sv <= 288:
                            errors["sleep.uplink_every"] = "must be an integer from 1 to 288"
                    else:
                        errors["sleep." + str(sk)] = "is not a setting of this node"
            else:
                errors[str(k)] = "is not a setting of this node"
        return errors

    def _apply(self, st):
        for k, v in st.items():
            if k == "sleep":
                self.state["sleep"].update(v)
            else:
                self.state[k] = v

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"version": self.version, "state": self.state}, f)
        import os
        os.rename(tmp, self.path)

    def on_delta(self, raw):
        """Apply a delta message; returns the report to publish on shadow/update."""
        try:
            d = json.loads(raw)
        except ValueError:
            d = None
        if type(d) is not dict:
            return self.report({"delta": "is not a JSON object"}, None)
        version = d.get("version")
        if type(version) is not int or version < 0:
            return self.report({"version": "must be a non-negative integer"}, None)
        if version <= self.version:
            return self.report({"version": "stale: already at %d" % self.version}, version)
        errors = self._check(d.get("state"))
        if errors:
            return self.report(errors, version)
        self._apply(d["state"])
        self.version = version
        self._save()
        return self.report(None, version)

    def report(self, errors=None, version=None, extra=None):
        reported = dict(self.state)
        if extra:
            reported.update(extra)
        msg = {"state": {"reported": reported}, "version": self.version if version is None else version}
        if errors:
            msg["rejected"] = errors
        return json.dumps(msg)
