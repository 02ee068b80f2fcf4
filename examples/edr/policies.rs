//! The three policies, checked: as `main.rs` builds them from the
//! environment, then as `POLICY_FILE` replaces them. The checks are the
//! library's own (`Policy::validate()`); this names the variable behind the
//! field an error reports.

use axum_redis_ratelimit::{
    Error, Policy,
    config::{PolicyConfig, PolicyFile},
};

use crate::{
    EVENT_COUNT_HEADER,
    batch::BatchCost,
    config::{Env, SECRET_VARIABLES, StartupError},
};

/// The variables behind each policy's fields (`field` as
/// `Error::Config` names it, up to its first `.`), and so the variables a
/// policy file's policy overrides.
const VARIABLES: &[(&str, &[(&str, &str)])] = &[
    (
        "telemetry",
        &[
            ("rate", "TELEMETRY_RATE"),
            ("limits", "TELEMETRY_RATE"),
            ("algorithm", "TELEMETRY_ALGORITHM"),
            ("burst", "TELEMETRY_BURST"),
            ("fallback_divisor", "TELEMETRY_FALLBACK_DIVISOR"),
            ("block_cache", "TELEMETRY_BLOCK_CACHE"),
            ("lease", "TELEMETRY_LEASE"),
            ("mode", "TELEMETRY_MODE"),
            ("exempt", "TELEMETRY_EXEMPT_TOKENS"),
        ],
    ),
    (
        "login",
        &[
            ("rate", "LOGIN_RATE"),
            ("limits", "LOGIN_RATE"),
            ("key", "TRUSTED_PROXIES"),
            ("mode", "LOGIN_MODE"),
        ],
    ),
    (
        "dashboard",
        &[
            ("rate", "DASHBOARD_RATE"),
            ("limits", "DASHBOARD_RATE"),
            ("mode", "DASHBOARD_MODE"),
        ],
    ),
];

/// `(field, variable)` for the policy called `name`.
fn variables(name: &str) -> impl Iterator<Item = (&'static str, &'static str)> {
    let fields = VARIABLES.iter().find(|(policy, _)| *policy == name);
    fields
        .into_iter()
        .flat_map(|(_, fields)| fields.iter().copied())
}

/// The policies of the three limited routes, each checked.
pub struct Policies {
    pub telemetry: PolicySpec,
    /// What the telemetry policy charges a batch: the handler holds the
    /// body to it.
    pub telemetry_cost: BatchCost,
    pub login: PolicySpec,
    pub dashboard: PolicySpec,
}

/// A checked policy, and where it came from.
pub struct PolicySpec {
    pub policy: Policy,
    /// `environment`, or the policy file's path.
    pub origin: String,
}

impl Policies {
    pub fn all(&self) -> [&PolicySpec; 3] {
        [&self.telemetry, &self.login, &self.dashboard]
    }

    /// The policies as built from the environment, checked, then replaced
    /// by those of `POLICY_FILE`, if set. Every variable is checked, even
    /// those the file then overrides.
    pub fn new(
        env: &Env,
        [telemetry, login, dashboard]: [Policy; 3],
    ) -> Result<Self, StartupError> {
        let mut policies = Self {
            telemetry: PolicySpec::from_env(telemetry, env)?,
            telemetry_cost: BatchCost::Header(EVENT_COUNT_HEADER),
            login: PolicySpec::from_env(login, env)?,
            dashboard: PolicySpec::from_env(dashboard, env)?,
        };
        if let Some(path) = &env.policy_file {
            policies.apply_file(path, env)?;
        }
        Ok(policies)
    }

    /// Replaces the policies that the file at `path` defines.
    fn apply_file(&mut self, path: &str, env: &Env) -> Result<(), StartupError> {
        let fail = |reason: String| StartupError::new("POLICY_FILE", reason);
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read {path:?}: {e}")))?;
        // The message is serde's and toml's: it quotes the bad value and
        // shows the line it is on.
        let file: PolicyFile = toml::from_str(&text)
            .map_err(|e| fail(format!("{path:?} is not a valid policy file: {e}")))?;
        let mut seen: Vec<String> = Vec::new();
        for config in file.policies {
            let name = config.name.clone();
            let slot = match name.as_str() {
                "telemetry" => &mut self.telemetry,
                "login" => &mut self.login,
                "dashboard" => &mut self.dashboard,
                other => {
                    return Err(fail(format!(
                        "{path:?}: unknown policy {other:?}: the limited routes' policies \
                         are telemetry, login and dashboard"
                    )));
                }
            };
            if seen.contains(&name) {
                return Err(fail(format!("{path:?}: policy {name:?} is defined twice")));
            }
            let cost = config.cost.clone();
            *slot = PolicySpec::from_file(config, path)?;
            if name == "telemetry" {
                self.telemetry_cost = BatchCost::from_config(cost, path)?;
            }
            let mut ignored: Vec<&str> = variables(&name)
                .map(|(_, var)| var)
                .filter(|var| env.given(var).is_some())
                .collect();
            ignored.dedup();
            if !ignored.is_empty() {
                tracing::warn!(
                    policy = name,
                    ignored = %ignored.join(", "),
                    "POLICY_FILE defines this policy: its environment variables are ignored"
                );
            }
            seen.push(name);
        }
        Ok(())
    }
}

impl PolicySpec {
    /// Checks `policy`, naming the variable behind the field at fault and
    /// quoting its value: `TELEMETRY_BURST: "5": invalid
    /// `policies.telemetry.burst`: applies only to the gcra algorithm`.
    fn from_env(policy: Policy, env: &Env) -> Result<Self, StartupError> {
        policy.validate().map_err(|err| {
            let var = match &err {
                Error::Config { field, .. } => {
                    let field = field.split('.').next().unwrap_or_default();
                    variables(policy.name()).find(|(f, _)| *f == field)
                }
                _ => None,
            };
            match var.map(|(_, var)| (var, env.given(var))) {
                Some((var, Some(_))) if SECRET_VARIABLES.contains(&var) => {
                    StartupError::new(var, err)
                }
                Some((var, Some(value))) => StartupError::new(var, format!("{value:?}: {err}")),
                Some((var, None)) => StartupError::new(var, err),
                None => StartupError::new("policies", err),
            }
        })?;
        Ok(Self {
            policy,
            origin: "environment".to_owned(),
        })
    }

    fn from_file(config: PolicyConfig, path: &str) -> Result<Self, StartupError> {
        let fail = |e: Error| StartupError::new("POLICY_FILE", format!("{path:?}: {e}"));
        let policy = config.into_policy();
        policy.validate().map_err(fail)?;
        Ok(Self {
            policy,
            origin: path.to_owned(),
        })
    }
}
