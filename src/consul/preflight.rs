//! What is looked up on the agent once, before following it: the sidecar registration that
//! `[consul] sidecar_for` names by the service it is for, found as `consul connect envoy
//! -sidecar-for` finds it (a connect-proxy whose `Proxy.DestinationServiceName` is that
//! service). Done at start and on each reload; the follower then follows the ID found.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::client::{Blocking, Client, Request};
use super::errors::ApiError;
use super::Settings;

/// Why `sidecar_for` names no single registration.
#[derive(Debug)]
pub enum PreflightError {
    Agent(ApiError),
    /// The agent's answer to `/v1/agent/services` did not parse.
    Answer(String),
    NoSidecar {
        service: String,
    },
    Several {
        service: String,
        ids: Vec<String>,
    },
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreflightError::Agent(e) => write!(f, "cannot list the agent's services: {e}"),
            PreflightError::Answer(e) => {
                write!(f, "the agent's list of services is not what Consul sends: {e}")
            }
            PreflightError::NoSidecar { service } => write!(
                f,
                "sidecar_for = {service:?}: no connect-proxy registration for {service:?} on this agent (register the service with connect {{ sidecar_service {{}} }}, or check the token's service:read)"
            ),
            PreflightError::Several { service, ids } => write!(
                f,
                "sidecar_for = {service:?}: {} connect-proxy registrations are for {service:?} ({}); name one with sidecar_service_id",
                ids.len(),
                ids.join(", ")
            ),
        }
    }
}

impl std::error::Error for PreflightError {}

/// The part of `/v1/agent/services` this reads.
#[derive(Deserialize)]
struct Registration {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Kind", default)]
    kind: String,
    #[serde(rename = "Proxy", default)]
    proxy: Option<ProxyPart>,
}

#[derive(Deserialize)]
struct ProxyPart {
    #[serde(rename = "DestinationServiceName", default)]
    destination_service_name: String,
}

/// The ID of the one connect-proxy registration on the agent for `service`.
pub fn sidecar_id(client: &Client, service: &str) -> Result<String, PreflightError> {
    let reply = client
        .get(&Request::new("/v1/agent/services".into()), &Blocking::No)
        .map_err(PreflightError::Agent)?;
    sidecar_in(&reply.body, service)
}

fn sidecar_in(body: &str, service: &str) -> Result<String, PreflightError> {
    let all: BTreeMap<String, Registration> =
        serde_json::from_str(body).map_err(|e| PreflightError::Answer(e.to_string()))?;
    let mut ids: Vec<String> = all
        .into_values()
        .filter(|r| {
            r.kind == "connect-proxy"
                && r.proxy
                    .as_ref()
                    .is_some_and(|p| p.destination_service_name == service)
        })
        .map(|r| r.id)
        .collect();
    match ids.len() {
        0 => Err(PreflightError::NoSidecar {
            service: service.to_owned(),
        }),
        1 => Ok(ids.remove(0)),
        _ => Err(PreflightError::Several {
            service: service.to_owned(),
            ids,
        }),
    }
}

/// `settings` with `sidecar_service_id` filled from `sidecar_for` (unchanged without it).
pub fn resolve_sidecar_for(mut settings: Settings) -> Result<Settings, PreflightError> {
    if let Some(service) = settings.sidecar_for.clone() {
        let client = Client::new(&settings);
        let id = sidecar_id(&client, &service);
        client.shutdown();
        let id = id?;
        crate::info!("consul: sidecar_for = {service:?} is the registration {id:?}");
        settings.sidecar_service_id = Some(id);
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = r#"{
        "web": {"ID": "web", "Service": "web", "Kind": ""},
        "web-sidecar-proxy": {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy",
            "Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "web"}},
        "api-a": {"ID": "api-a", "Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "api"}},
        "api-b": {"ID": "api-b", "Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "api"}},
        "gw": {"ID": "gw", "Kind": "mesh-gateway", "Proxy": {}}
    }"#;

    #[test]
    fn finds_the_one_sidecar_or_says_why_not() {
        assert_eq!(sidecar_in(SERVICES, "web").unwrap(), "web-sidecar-proxy");
        let e = sidecar_in(SERVICES, "db").unwrap_err().to_string();
        assert!(
            e.contains("no connect-proxy registration for \"db\""),
            "{e}"
        );
        let e = sidecar_in(SERVICES, "api").unwrap_err().to_string();
        assert!(
            e.contains("2 connect-proxy registrations") && e.contains("api-a, api-b"),
            "{e}"
        );
        let e = sidecar_in("[]", "web").unwrap_err().to_string();
        assert!(e.contains("not what Consul sends"), "{e}");
    }
}
