//! A plugin built against a future contract version the host does not serve.

wit_bindgen::generate!({
    inline: r#"
        package disaggregatedset:plugin@0.9.0;
        interface hooks {
            describe: func() -> string;
        }
        world plugin {
            export hooks;
        }
    "#,
});

struct Future;

impl exports::disaggregatedset::plugin::hooks::Guest for Future {
    fn describe() -> String {
        "from the future".into()
    }
}

export!(Future);
