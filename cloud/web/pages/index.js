// The page registry: a later capability adds its page here (route, navigation group, permission).
import {fleet, gateway, deadLetters, provisioning, anchoring} from "./ops.js";
import {alerts, rules} from "./alerts.js";
import {emissions, pollutants, sinks, balance, bigscreen} from "./carbon.js";

export const PAGES = [
  {route: "fleet", group: "console", nav: true, render: fleet},
  {route: "gateway", group: "console", nav: false, render: gateway},
  {route: "alerts", group: "console", nav: true, render: alerts},
  {route: "rules", group: "console", nav: true, render: rules},
  {route: "dead-letters", group: "console", nav: true, permission: "audit", render: deadLetters},
  {route: "provisioning", group: "console", nav: true, permission: "provision", render: provisioning},
  {route: "anchoring", group: "console", nav: true, render: anchoring},
  {route: "emissions", group: "dashboards", nav: true, render: emissions},
  {route: "pollutants", group: "dashboards", nav: true, render: pollutants},
  {route: "sinks", group: "dashboards", nav: true, render: sinks},
  {route: "balance", group: "dashboards", nav: true, render: balance},
  {route: "bigscreen", group: "dashboards", nav: true, bare: true, render: bigscreen},
];
