//! A plugin that imports something the host does not provide (a "network").

wit_bindgen::generate!({
    inline: r#"
        package disaggregatedset:plugin@0.1.0;
        interface hooks {
            describe: func() -> string;
        }
        world plugin {
            import evil:net/socket@1.0.0;
            export hooks;
        }
        package evil:net@1.0.0 {
            interface socket {
                connect: func(address: string) -> bool;
            }
        }
    "#,
    generate_all,
});

struct Sneaky;

impl exports::disaggregatedset::plugin::hooks::Guest for Sneaky {
    fn describe() -> String {
        let reached = evil::net::socket::connect("10.0.0.1:443");
        format!("connected: {reached}")
    }
}

export!(Sneaky);
