//! The portal in a real browser: `candor standalone` with two tenants of
//! `candor simulate`'s staff, tokens for each role made with the CLI, then
//! `tests/portal/portal.test.mjs` drives headless Chromium through every
//! view (see that file for what it checks). Needs `node`, Chromium
//! (`CHROMIUM`, default `/usr/bin/chromium`) and `npm ci --prefix
//! tests/portal`, which `scripts/test` and `.ci/run` provide.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use common::process::{
    Standalone, candor, count_before, load_simulated_directory, secret_in, simulate,
};
use serde_json::json;

/// Three work days, all ended: the latest Wednesday-to-Friday before today.
fn days() -> (NaiveDate, NaiveDate) {
    let mut last = Utc::now().date_naive() - Days::new(1);
    while last.weekday() != Weekday::Fri {
        last = last - Days::new(1);
    }
    (last - Days::new(2), last)
}

fn portal_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/portal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_shows_each_role_its_scope_in_a_real_browser() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = portal_dir().join("node_modules/playwright-core");
    assert!(
        Path::new(&chromium).exists() && modules.exists(),
        "the browser tests need Chromium at {chromium} (apt-get install chromium, or set \
         CHROMIUM) and `npm ci --prefix tests/portal`; scripts/test installs the latter"
    );
    let data = tempfile::tempdir().unwrap();
    let (_, secret_file) = secret_in(data.path());
    let run = |args: &[&str]| candor(data.path(), &secret_file, args);
    let (from, to) = days();
    let last_day = to.to_string();
    // acme: three departments, field staff among them; globex: five, so
    // its Engineering, Finance and Operations must never show at acme.
    let staff = |tenant: &'static str, departments: &'static str, field: &'static str| {
        vec![
            "--tenant",
            tenant,
            "--employees",
            "10",
            "--departments",
            departments,
            "--field-share",
            field,
            "--absence-share",
            "0",
            "--seed",
            "4",
        ]
    };
    let mut owners = Vec::new();
    let mut directories = Vec::new();
    for (tenant, departments, field) in [("acme", "3", "0.2"), ("globex", "5", "0")] {
        owners.push(
            run(&[
                "tenant",
                "create",
                "--tenant",
                tenant,
                "--time-zone",
                "UTC",
                "--bootstrap-token",
            ])
            .trim()
            .to_string(),
        );
        let file = data.path().join(format!("{tenant}.json"));
        let people = staff(tenant, departments, field);
        directories.push(load_simulated_directory(
            data.path(),
            &secret_file,
            tenant,
            &people,
            &file,
        ));
    }
    let acme = &directories[0]["employees"];
    let department_of = |e: &str| acme[e]["department"].as_str().unwrap().to_string();
    // The manager of the first employee's department, that employee, and
    // one of another department.
    let ids: Vec<String> = acme.as_object().unwrap().keys().cloned().collect();
    let (manager, managed) = acme
        .as_object()
        .unwrap()
        .iter()
        .find_map(|(e, m)| {
            let manages = m["manages"].as_array()?;
            (!manages.is_empty()).then(|| (e.clone(), manages[0].as_str().unwrap().to_string()))
        })
        .unwrap();
    let employee = ids
        .iter()
        .find(|e| **e != manager && department_of(e) == managed)
        .unwrap()
        .clone();
    let other = ids
        .iter()
        .find(|e| department_of(e) != managed)
        .unwrap()
        .clone();
    let token = |role: &str, name: &str, employee: Option<&str>| {
        let mut args = vec![
            "token", "create", "--tenant", "acme", "--role", role, "--name", name,
        ];
        args.extend(employee.map(|e| ["--employee", e]).into_iter().flatten());
        run(&args).trim().to_string()
    };
    let tokens = json!({
        "owner": owners[0],
        "hr": token("hr", "hr", None),
        "analyst": token("analyst", "analyst", None),
        "manager": token("manager", "manager", Some(&manager)),
        "employee": token("employee", "employee", Some(&employee)),
        "revocable": token("hr", "revocable", None),
    });

    let standalone = Standalone::start(data.path(), &secret_file, &[]);
    let mut events = 0;
    for (tenant, departments, field) in [("acme", "3", "0.2"), ("globex", "5", "0")] {
        let args = staff(tenant, departments, field);
        let summary = simulate(
            data.path(),
            &secret_file,
            &standalone.url,
            3,
            &last_day,
            &args,
        )
        .await;
        events += count_before(&summary, "events");
    }
    standalone.wait_for_events(events).await;
    let link = run(&[
        "token",
        "sign-in-link",
        "--tenant",
        "acme",
        "--role",
        "employee",
        "--employee",
        &employee,
        "--url",
        &standalone.query_url,
    ]);

    let config = json!({
        "from": from,
        "to": to,
        "tokens": tokens,
        "employee": employee,
        "other_employee": other,
        "employee_ids": ids,
        "manager_departments": [managed],
        "sign_in_link": link.trim(),
        "other_tenant_words": ["globex", "Engineering", "Finance", "Operations"],
    });
    let mut test = Command::new("node");
    test.arg(portal_dir().join("portal.test.mjs"))
        .env("PORTAL_URL", &standalone.query_url)
        .env("PORTAL_CONFIG", config.to_string())
        .env("CHROMIUM", &chromium);
    let out = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::task::spawn_blocking(move || test.output()),
    )
    .await
    .expect("the browser test finished in time")
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    standalone.terminate();
    assert!(standalone.exit_status().await.success());
}
