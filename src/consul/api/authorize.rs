//! `POST /v1/agent/connect/authorize`: may this caller (its verified certificate's SPIFFE ID)
//! connect to the target service? The agent evaluates intentions and the default policy.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AuthorizeRequest {
    pub target: String,
    #[serde(rename = "ClientCertURI")]
    pub client_cert_uri: String,
    pub client_cert_serial: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AuthorizeResponse {
    pub authorized: bool,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;

    #[test]
    fn examples_field_by_field() {
        let req: AuthorizeRequest =
            serde_json::from_str(&example("agent-connect-authorize-request.json")).unwrap();
        assert_eq!(req.target, "web");
        assert!(req
            .client_cert_uri
            .ends_with("/ns/default/dc/dc1/svc/frontend"));
        assert_eq!(req.client_cert_serial, "04:00:00:00:00:01:15:4b:5a:c3:94");
        // What we send has exactly the keys Consul reads.
        let sent: serde_json::Value = serde_json::to_value(&req).unwrap();
        let keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["ClientCertSerial", "ClientCertURI", "Target"]);

        let resp: AuthorizeResponse =
            serde_json::from_str(&example("agent-connect-authorize-response.json")).unwrap();
        assert!(resp.authorized);
        assert!(resp
            .reason
            .starts_with("Matched L4 intention: default/frontend => default/web"));
    }
}
