// Node-RED settings for the CarbonLink example flow (used by tests/compose/test_nodered.py as well).
// NODE_RED_PORT sets the port; the flow reads MQTT_HOST and MQTT_PORT (and, to deploy rules,
// CARBONLINK_API and CARBONLINK_API_TOKEN) from the environment. In production put adminAuth here.
module.exports = {
    uiPort: parseInt(process.env.NODE_RED_PORT || "1880", 10),
    uiHost: process.env.NODE_RED_HOST || "127.0.0.1",
    flowFile: "flows.json",
    credentialSecret: false,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    editorTheme: { tours: false, projects: { enabled: false } },
    diagnostics: { enabled: false },
    telemetry: { enabled: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    functionExternalModules: false,
};
