//! The world's addresses. They exist only inside the world's own network namespaces; nothing on
//! the host's network dials them.

/// The bridge address: gateway of the pod network, apiserver and DNS address.
pub const GATEWAY: &str = "10.244.0.1";
/// MAC address of the bridge, set once: a bridge otherwise takes its lowest port's address, and
/// every change flushed the node's neighbour entries (permanent ones too) and stranded pods
/// holding the old one.
pub const GATEWAY_MAC: &str = "02:00:0a:f4:00:01";
/// The pod network.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The service network.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's address.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// The in-world address of the `kube-dns` Service.
pub const DNS_SERVICE_IP: &str = "10.96.0.10";
/// The node's name (also its host name in node addresses).
pub const NODE_NAME: &str = "world";
/// The apiserver's port.
pub const APISERVER_PORT: u16 = 6443;

/// The address of the pod with sequence number `index` (1-based; the gateway is index 1).
pub fn pod_ip(index: u32) -> String {
    format!("10.244.{}.{}", index / 256, index % 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_stay_in_the_pod_network() {
        assert_eq!(pod_ip(2), "10.244.0.2");
        assert_eq!(pod_ip(257), "10.244.1.1");
        assert!(pod_ip(65_534).starts_with("10.244."));
    }
}
