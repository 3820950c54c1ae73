# Shadow deltas: {"version": n, "state": {...}} is applied whole or not at all. Any malformed or
# out-of-range key rejects it, and the reasons go back on shadow/update with the current state.
import json


def check(ids, st):
    if type(st) is not dict or not st:
        return {"state": "must be a non-empty object"}
    errors = {}
    for k, v in st.items():
        if k == "sample_interval_s":
            if type(v) is not int or not 10 <= v <= 86400:
                errors[k] = "must be an integer from 10 to 86400"
        elif k == "sensors_enabled":
            if type(v) is not list or any(type(x) is not str or x not in ids for x in v) \
                    or len(set(v)) != len(v):
                errors[k] = "must be a list of distinct sensor ids from: " + ",".join(ids)
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


def on_delta(sh, raw):
    """Apply a delta message; returns the report to publish on shadow/update."""
    try:
        d = json.loads(raw)
    except ValueError:
        d = None
    if type(d) is not dict:
        return sh.report({"delta": "is not a JSON object"}, None)
    version = d.get("version")
    if type(version) is not int or version < 0:
        return sh.report({"version": "must be a non-negative integer"}, None)
    if version <= sh.version:
        return sh.report({"version": "stale: already at %d" % sh.version}, version)
    errors = check(sh.ids, d.get("state"))
    if errors:
        return sh.report(errors, version)
    sh._apply(d["state"])
    sh.version = version
    sh._save()
    return sh.report(None, version)
