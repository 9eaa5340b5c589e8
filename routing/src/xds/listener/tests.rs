use super::chain_name;

#[test]
fn chain_names_of_every_release() {
    let h = "reviews.default.svc.cluster.local";
    let cases = [
        // 1.22/1.23
        (
            format!("inbound-vip|9080||{h}-http"),
            format!("inbound-vip|9080|http|{h}"),
        ),
        (
            format!("inbound-vip|27017||{h}-tcp"),
            format!("inbound-vip|27017|tcp|{h}"),
        ),
        // 1.24+: unchanged
        (
            format!("inbound-vip|9080|http|{h}"),
            format!("inbound-vip|9080|http|{h}"),
        ),
        ("direct-http".into(), "direct-http".into()),
        // Not a legacy name: left as is (and reported as not a service chain).
        (
            format!("inbound-vip|x||{h}-http"),
            format!("inbound-vip|x||{h}-http"),
        ),
        (
            "inbound-vip|9080||-http".into(),
            "inbound-vip|9080||-http".into(),
        ),
        (
            format!("inbound-vip|9080||{h}-udp"),
            format!("inbound-vip|9080||{h}-udp"),
        ),
        (
            format!("outbound|9080||{h}-http"),
            format!("outbound|9080||{h}-http"),
        ),
    ];
    for (name, want) in cases {
        assert_eq!(chain_name(&name), want, "{name}");
    }
}
