//! A component's variables: `[component.<id>.variables]` templates over the
//! app's `[variables]`, resolved as Spin does (`SPIN_VARIABLE_<NAME>`, then
//! the default), answered by Spin's variables interface and
//! `wasi:config/store`; secrets never printed.

use crate::support::*;
use std::time::Duration;

fn variables_app(name: &str, app_vars: &str, component_vars: &str) -> AppDir {
    probe_app_granted(
        name,
        &format!("[variables]\n{app_vars}"),
        &format!("[component.probe.variables]\n{component_vars}"),
    )
}

fn ask_for(id: &str, names: &str) -> messaging_provider::cloudevents::Event {
    let mut e = event(id, "probe.variables");
    e.data = Some(names.as_bytes().to_vec());
    e
}

#[tokio::test]
async fn variables_come_from_the_environment_then_the_default() {
    let app = variables_app(
        "settings",
        r#"vt_greeting = { default = "hello" }
vt_region = { default = "eu" }
vt_token = { required = true, secret = true }"#,
        r#"greeting = "{{ vt_greeting }}, world"
region = "{{ vt_region }}"
token = "{{ vt_token }}"
plain = "literal""#,
    );
    unsafe {
        std::env::set_var("SPIN_VARIABLE_VT_TOKEN", "s3cret-value");
        std::env::set_var("SPIN_VARIABLE_VT_REGION", "us");
    }
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "settings", "results").await;
    let (_, data) = ask(
        &provider,
        "settings",
        &mut results,
        ask_for("v-1", "greeting,region,token,plain,vt_greeting,missing,Bad"),
    )
    .await;
    let answers: Vec<&str> = data.split(';').collect();
    assert_eq!(
        answers[0], "greeting=hello, world|hello, world",
        "the default"
    );
    assert_eq!(answers[1], "region=us|us", "the environment first");
    assert_eq!(answers[2], "token=s3cret-value|s3cret-value");
    assert_eq!(answers[3], "plain=literal|literal");
    // App variables are not the component's: only what its table gives.
    assert!(
        answers[4].starts_with("vt_greeting=Error::Undefined("),
        "{}",
        answers[4]
    );
    assert!(
        answers[5].contains(r#"no variable for \"probe\".\"missing\""#),
        "{}",
        answers[5]
    );
    assert!(answers[5].ends_with("|none"), "{}", answers[5]);
    assert!(
        answers[6].starts_with("Bad=Error::InvalidName("),
        "{}",
        answers[6]
    );
    let summary = provider.summary();
    assert!(
        summary.contains("variables:     greeting, plain, region, token"),
        "{summary}"
    );
    assert!(!summary.contains("s3cret-value"), "{summary}");
}

#[test]
fn secrets_stay_out_of_the_output_and_the_errors() {
    let app = variables_app(
        "secretive",
        r#"st_token = { required = true, secret = true }"#,
        r#"token = "{{ st_token }}""#,
    );
    let manifest = app.manifest.to_str().unwrap();
    // Missing: the error names the variable and how to set it.
    let mut missing = run(&["up", "-f", manifest]);
    assert_eq!(missing.wait_exit(Duration::from_secs(30)), 1);
    missing.wait_for("stderr", "SPIN_VARIABLE_ST_TOKEN");
    missing.wait_for("stderr", "spin.toml:16: `component.probe.variables.token`");

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trigger-messaging"));
    command
        .args([
            "up",
            "-f",
            manifest,
            "--messaging-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env("RUST_LOG", "debug")
        .env("SPIN_VARIABLE_ST_TOKEN", "hunter2-very-secret")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut running = Running::adopt(command.spawn().unwrap());
    running.wait_for("stdout", "Ready");
    running.terminate();
    assert_eq!(running.wait_exit(Duration::from_secs(20)), 0);
    assert!(!running.all().contains("hunter2"), "{}", running.all());
}

#[test]
fn variable_mistakes_are_located() {
    guests();
    for (app_vars, component_vars, at, says) in [
        (
            "",
            r#"Bad-Name = "x""#,
            "`component.probe.variables.Bad-Name`",
            "not a variable name",
        ),
        (
            "",
            r#"a__b = "x""#,
            "`component.probe.variables.a__b`",
            "single `_`",
        ),
        (
            "",
            r#"x = "{{ undeclared }}""#,
            "`component.probe.variables.x`",
            "not declared",
        ),
        (
            "",
            r#"x = "{{ open""#,
            "`component.probe.variables.x`",
            "unclosed",
        ),
        (
            r#"Up = { default = "x" }"#,
            "",
            "`variables.Up`",
            "not a variable name",
        ),
        ("", "x = 3", "`component.probe.variables.x`", "string"),
    ] {
        let app = variables_app("bad-vars", app_vars, component_vars);
        let errors = messaging_provider::manifest::load_app(&app.manifest, &|l| l == "default")
            .unwrap_err()
            .to_string();
        assert!(errors.contains(at), "{component_vars}: {errors}");
        assert!(errors.contains(says), "{component_vars}: {errors}");
    }
}
