//! Mesh-gateway mode selection for one upstream, with Consul's exact precedence, and where
//! that mode sends the bytes.
//!
//! Precedence, highest first (as Consul's proxycfg resolves it; `config/README.md`): the upstream's own
//! `mesh_gateway`, the downstream service's `service_defaults.upstream_config.overrides[name]`,
//! the proxy's (`[sidecar] mesh_gateway`), `upstream_config.defaults`, the downstream service's
//! `service_defaults.mesh_gateway`, `proxy_defaults.mesh_gateway`, the target service's
//! `service_defaults.mesh_gateway`, the target partition's `proxy_defaults` (Consul source
//! only), then nothing → `none`.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::config_entries::ConfigEntries;
use super::sidecar::SidecarSpec;
use super::Place;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    None,
    Local,
    Remote,
}

/// A mode word that is none of Consul's three.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownMode(pub String);

impl fmt::Display for UnknownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not \"none\", \"local\" or \"remote\"", self.0)
    }
}

impl std::error::Error for UnknownMode {}

/// The words of Consul's `MeshGateway.Mode`, the same in the file and in the agent's JSON.
impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(word: &str) -> Result<Mode, UnknownMode> {
        match word {
            "none" => Ok(Mode::None),
            "local" => Ok(Mode::Local),
            "remote" => Ok(Mode::Remote),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

impl Mode {
    /// One precedence level's setting: the empty word (Consul's default) is "not set here",
    /// and the next level down decides.
    pub fn level(word: &str) -> Result<Option<Mode>, UnknownMode> {
        match word {
            "" => Ok(None),
            word => word.parse().map(Some),
        }
    }
}

/// The level that decided the mode, as `check --json` reports it (`mode_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeSource {
    Upstream,
    UpstreamConfigOverride,
    Proxy,
    UpstreamConfigDefaults,
    ServiceDefaults,
    ProxyDefaults,
    TargetServiceDefaults,
    /// Reached only with the Consul source, where the target's partition is a separate
    /// config-entry scope; with a file there is one `proxy_defaults`.
    TargetProxyDefaults,
    Default,
}

/// Every level's setting for one upstream; `None` means "not set at that level" (Consul's
/// empty mode, which inherits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModeLevels {
    pub upstream: Option<Mode>,
    pub upstream_config_override: Option<Mode>,
    pub proxy: Option<Mode>,
    pub upstream_config_defaults: Option<Mode>,
    pub service_defaults: Option<Mode>,
    pub proxy_defaults: Option<Mode>,
    pub target_service_defaults: Option<Mode>,
    pub target_proxy_defaults: Option<Mode>,
}

impl ModeLevels {
    pub fn resolve(&self) -> (Mode, ModeSource) {
        [
            (self.upstream, ModeSource::Upstream),
            (
                self.upstream_config_override,
                ModeSource::UpstreamConfigOverride,
            ),
            (self.proxy, ModeSource::Proxy),
            (
                self.upstream_config_defaults,
                ModeSource::UpstreamConfigDefaults,
            ),
            (self.service_defaults, ModeSource::ServiceDefaults),
            (self.proxy_defaults, ModeSource::ProxyDefaults),
            (
                self.target_service_defaults,
                ModeSource::TargetServiceDefaults,
            ),
            (self.target_proxy_defaults, ModeSource::TargetProxyDefaults),
        ]
        .into_iter()
        .find_map(|(mode, source)| mode.map(|m| (m, source)))
        .unwrap_or((Mode::None, ModeSource::Default))
    }
}

/// A registration merged by the agent (Consul 1.9+ with central config) carries the
/// config-entry levels already resolved into each upstream's and the proxy's `MeshGateway`.
/// Reading them as explicit would report `mode_source = upstream` for a mode that came from
/// `proxy-defaults`. Where leaving a level unset gives the same mode for every upstream, the
/// level is taken as merged and left unset, so the source names the config entry. The mode
/// itself never changes.
pub fn attribute_merged_levels(spec: &mut SidecarSpec, entries: &ConfigEntries) {
    let modes = |spec: &SidecarSpec| -> Vec<_> {
        spec.upstreams
            .iter()
            .map(|u| entries.mode_levels(spec, u).resolve().0)
            .collect()
    };
    let before = modes(spec);
    let merged_proxy = entries
        .service_defaults
        .get(&spec.service)
        .and_then(|d| d.mesh_gateway)
        .or(entries.proxy_defaults);
    if spec.mesh_gateway.is_some() && spec.mesh_gateway == merged_proxy {
        let mut candidate = spec.clone();
        candidate.mesh_gateway = None;
        if modes(&candidate) == before {
            *spec = candidate;
        }
    }
    for i in 0..spec.upstreams.len() {
        let Some(own) = spec.upstreams[i].mesh_gateway else {
            continue;
        };
        let mut candidate = spec.clone();
        candidate.upstreams[i].mesh_gateway = None;
        let (mode, source) = entries
            .mode_levels(&candidate, &candidate.upstreams[i])
            .resolve();
        let agent_merges = matches!(
            source,
            ModeSource::UpstreamConfigOverride
                | ModeSource::Proxy
                | ModeSource::UpstreamConfigDefaults
                | ModeSource::ServiceDefaults
                | ModeSource::ProxyDefaults
        );
        if mode == own && agent_merges {
            spec.upstreams[i].mesh_gateway = None;
        }
    }
}

/// Where an upstream connection is dialled. The SNI and the required server identity are the
/// final target's in every case; only the address changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "via", content = "place")]
pub enum Via {
    /// The target's instances: same place (whatever the mode), or mode `none`.
    Instances,
    /// This host's own place's gateways, LAN addresses (mode `local`).
    LocalGateways(Place),
    /// The target place's gateways, WAN addresses (mode `remote`).
    RemoteGateways(Place),
}

/// Gateways are used only when the target's (datacenter, partition) differs from ours
/// (Consul: proxycfg/upstreams.go `needGateways`).
pub fn via(here: &Place, target: &Place, mode: Mode) -> Via {
    if here == target {
        return Via::Instances;
    }
    match mode {
        Mode::None => Via::Instances,
        Mode::Local => Via::LocalGateways(here.clone()),
        Mode::Remote => Via::RemoteGateways(target.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::{Local, None as Off, Remote};

    /// One case per level: that level is set (to a value different from every lower level's)
    /// and all lower levels are set too, so the case fails if the order is wrong.
    #[test]
    fn every_level_beats_the_ones_below_it() {
        let full = ModeLevels {
            upstream: Some(Remote),
            upstream_config_override: Some(Local),
            proxy: Some(Off),
            upstream_config_defaults: Some(Remote),
            service_defaults: Some(Local),
            proxy_defaults: Some(Off),
            target_service_defaults: Some(Remote),
            target_proxy_defaults: Some(Local),
        };
        let cases = [
            (ModeSource::Upstream, Remote),
            (ModeSource::UpstreamConfigOverride, Local),
            (ModeSource::Proxy, Off),
            (ModeSource::UpstreamConfigDefaults, Remote),
            (ModeSource::ServiceDefaults, Local),
            (ModeSource::ProxyDefaults, Off),
            (ModeSource::TargetServiceDefaults, Remote),
            (ModeSource::TargetProxyDefaults, Local),
        ];
        let mut levels = full;
        for (source, mode) in cases {
            assert_eq!(levels.resolve(), (mode, source));
            // Unset this level: the next one must decide.
            match source {
                ModeSource::Upstream => levels.upstream = None,
                ModeSource::UpstreamConfigOverride => levels.upstream_config_override = None,
                ModeSource::Proxy => levels.proxy = None,
                ModeSource::UpstreamConfigDefaults => levels.upstream_config_defaults = None,
                ModeSource::ServiceDefaults => levels.service_defaults = None,
                ModeSource::ProxyDefaults => levels.proxy_defaults = None,
                ModeSource::TargetServiceDefaults => levels.target_service_defaults = None,
                ModeSource::TargetProxyDefaults => levels.target_proxy_defaults = None,
                ModeSource::Default => {}
            }
        }
        assert_eq!(levels.resolve(), (Off, ModeSource::Default));
        assert_eq!(ModeLevels::default().resolve(), (Off, ModeSource::Default));
    }

    #[test]
    fn words_parse_once_for_every_source() {
        assert_eq!(Mode::level(""), Ok(None));
        assert_eq!(Mode::level("local"), Ok(Some(Local)));
        assert_eq!("remote".parse(), Ok(Remote));
        assert_eq!("none".parse(), Ok(Off));
        let err = Mode::level("Local").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""Local" is not "none", "local" or "remote""#
        );
    }

    #[test]
    fn dial_follows_mode_only_across_places() {
        let dc1 = Place::new("dc1", "");
        let dc2 = Place::new("dc2", "");
        let ap1 = Place::new("dc1", "ap1");
        for mode in [Off, Local, Remote] {
            assert_eq!(
                via(&dc1, &dc1, mode),
                Via::Instances,
                "same place ignores {mode:?}"
            );
        }
        assert_eq!(via(&dc1, &dc2, Off), Via::Instances);
        assert_eq!(via(&dc1, &dc2, Local), Via::LocalGateways(dc1.clone()));
        assert_eq!(via(&dc1, &dc2, Remote), Via::RemoteGateways(dc2));
        assert_eq!(via(&dc1, &ap1, Local), Via::LocalGateways(dc1.clone()));
        assert_eq!(via(&dc1, &ap1, Remote), Via::RemoteGateways(ap1));
    }
}
