//! A tenant's privacy mode, through the real binary: `candor simulate`'s
//! staff into `candor standalone`, then the owner switches the tenant from
//! `per_person` to `team_only` with the admin API, as an owner would. From
//! then on managers and HR get group figures of at least k people only
//! (small departments and their complement suppressed, weeks whole, no
//! figure per employee, no SQL), equal to the sums of the owner's
//! per-employee rows; employees still see their own, and the refusals are
//! in the audit trail.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use common::process::{
    Standalone, candor, count_before, load_simulated_directory, secret_in, simulate,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Two work days (Monday to Friday) of one ISO week, both ended: the
/// latest such pair before today.
fn two_days() -> (NaiveDate, NaiveDate) {
    let mut last = Utc::now().date_naive() - Days::new(1);
    while !matches!(
        last.weekday(),
        Weekday::Tue | Weekday::Wed | Weekday::Thu | Weekday::Fri
    ) {
        last = last - Days::new(1);
    }
    (last - Days::new(1), last)
}

struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, token: &str, path: &str) -> Value {
        let (status, body) = self.get(token, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn sql(&self, token: &str, sql: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/v1/sql", self.url))
            .bearer_auth(token)
            .json(&json!({"sql": sql}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Sums of (tracked, active, idle) seconds and the people, per key.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sums {
    tracked_s: i64,
    active_s: i64,
    idle_s: i64,
    people: BTreeSet<String>,
}

impl Sums {
    fn add(&mut self, row: &Value, employee: &str) {
        self.tracked_s += row["tracked_s"].as_i64().unwrap();
        self.active_s += row["active_s"].as_i64().unwrap();
        self.idle_s += row["idle_s"].as_i64().unwrap();
        self.people.insert(employee.to_string());
    }

    fn figures(&self) -> (i64, i64, i64) {
        (self.tracked_s, self.active_s, self.idle_s)
    }
}

fn figures(row: &Value) -> (i64, i64, i64) {
    (
        row["tracked_s"].as_i64().unwrap(),
        row["active_s"].as_i64().unwrap(),
        row["idle_s"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_only_shows_managers_and_hr_groups_of_at_least_k_and_employees_their_own() {
    let data = tempfile::tempdir().unwrap();
    let (_, secret_file) = secret_in(data.path());
    let run = |args: &[&str]| candor(data.path(), &secret_file, args);
    let owner = run(&[
        "tenant",
        "create",
        "--tenant",
        "sim",
        "--time-zone",
        "UTC",
        "--bootstrap-token",
    ])
    .trim()
    .to_string();
    // Office staff only, in four departments of unequal size, nobody
    // absent: every employee works both days.
    let staff = [
        "--tenant",
        "sim",
        "--employees",
        "12",
        "--departments",
        "4",
        "--field-share",
        "0",
        "--absence-share",
        "0",
        "--seed",
        "11",
    ];
    let directory = load_simulated_directory(
        data.path(),
        &secret_file,
        "sim",
        &staff,
        &data.path().join("directory.json"),
    );
    let department_of: BTreeMap<String, String> = directory["employees"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(e, m)| (e.clone(), m["department"].as_str().unwrap().to_string()))
        .collect();
    let manager_of = |department: &str| -> String {
        let (employee, _) = directory["employees"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(_, m)| {
                m["manages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d == department)
            })
            .expect("each department has a manager");
        employee.clone()
    };
    // Departments by (size, name), smallest first: suppression's order.
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for d in department_of.values() {
        *sizes.entry(d.clone()).or_default() += 1;
    }
    let mut by_size: Vec<(usize, String)> = sizes.iter().map(|(d, n)| (*n, d.clone())).collect();
    by_size.sort();
    assert!(
        by_size.len() == 4 && by_size[1].0 > by_size[0].0,
        "the staff must have one department smaller than all others: {by_size:?}"
    );
    // k just above the smallest department: it is suppressed, and so is the
    // next smallest, or the whole minus the rest would show it.
    let k = by_size[0].0 + 1;
    let hidden: BTreeSet<&str> = by_size[..2].iter().map(|(_, d)| d.as_str()).collect();
    let shown: BTreeSet<&str> = by_size[2..].iter().map(|(_, d)| d.as_str()).collect();

    let token = |role: &str, employee: Option<&str>| {
        let mut args = vec![
            "token", "create", "--tenant", "sim", "--role", role, "--name", role,
        ];
        if let Some(e) = employee {
            args.extend(["--employee", e]);
        }
        run(&args).trim().to_string()
    };
    let (big, small) = (&by_size[3].1, &by_size[0].1);
    let big_manager = token("manager", Some(&manager_of(big)));
    let small_manager = token("manager", Some(&manager_of(small)));
    let hr = token("hr", None);
    let some_employee = department_of
        .iter()
        .find(|(_, d)| *d == small)
        .map(|(e, _)| e.clone())
        .unwrap();
    let employee = token("employee", Some(&some_employee));

    let standalone = Standalone::start(data.path(), &secret_file, &[]);
    let (from, to) = two_days();
    let summary = simulate(
        data.path(),
        &secret_file,
        &standalone.url,
        2,
        &to.to_string(),
        &staff,
    )
    .await;
    let events = count_before(&summary, "events");
    standalone.wait_for_events(events).await;

    let api = Api {
        url: standalone.query_url.clone(),
        http: reqwest::Client::new(),
    };
    let range = format!("from={from}&to={to}");
    let per_employee = format!("/v1/kpi/activity?{range}&group_by=employee,day&limit=1000");

    // per_person (the default): a manager sees each of their people.
    let rows = api.ok(&big_manager, &per_employee).await["rows"].clone();
    let seen: BTreeSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["employee"].as_str().unwrap())
        .collect();
    assert_eq!(seen.len(), sizes[big], "{rows}");

    // The owner's rows, per employee and day: what every group sums.
    let owner_rows = api.ok(&owner, &per_employee).await;
    let mut by_department_day: BTreeMap<(String, String), Sums> = BTreeMap::new();
    let mut by_day: BTreeMap<String, Sums> = BTreeMap::new();
    let mut by_department: BTreeMap<String, Sums> = BTreeMap::new();
    for row in owner_rows["rows"].as_array().unwrap() {
        let employee = row["employee"].as_str().unwrap();
        let (department, day) = (&department_of[employee], row["day"].as_str().unwrap());
        by_department_day
            .entry((department.clone(), day.to_string()))
            .or_default()
            .add(row, employee);
        by_day
            .entry(day.to_string())
            .or_default()
            .add(row, employee);
        by_department
            .entry(department.clone())
            .or_default()
            .add(row, employee);
    }
    assert_eq!(by_day.len(), 2, "both days have data: {owner_rows}");
    for ((department, day), sums) in &by_department_day {
        assert_eq!(
            sums.people.len(),
            sizes[department],
            "everyone of {department} worked on {day}"
        );
    }

    // The owner turns team_only on, with k above the smallest department.
    let (_, tenant) = api.get(&owner, "/v1/admin/tenant").await;
    let mut doc = tenant["document"].clone();
    doc["privacy_mode"] = json!("team_only");
    doc["extract_k"] = json!(k);
    let put = api
        .http
        .put(format!("{}/v1/admin/tenant", api.url))
        .bearer_auth(&owner)
        .header("If-Match", tenant["version"].to_string())
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        StatusCode::OK,
        "{}",
        put.text().await.unwrap()
    );
    let (_, tenant) = api.get(&owner, "/v1/admin/tenant").await;
    assert_eq!(tenant["document"]["privacy_mode"], "team_only");

    // Managers and HR: nothing per employee, no SQL, no figures per site,
    // no week cut short; each refusal says why.
    for t in [&big_manager, &hr] {
        let (status, body) = api.get(t, &per_employee).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["reason"], "privacy_mode", "{body}");
        let (status, body) = api.sql(t, "SELECT subject, active_s FROM activity").await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (StatusCode::FORBIDDEN, Some("privacy_mode")),
            "{body}"
        );
        let (status, body) = api
            .get(t, &format!("/v1/kpi/activity?{range}&group_by=department"))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, _) = api
        .get(&hr, &format!("/v1/kpi/gps?{range}&group_by=site,day"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // HR, by department and day: the two smallest departments are
    // suppressed each day, the others equal the owner's sums.
    let answer = api
        .ok(
            &hr,
            &format!("/v1/kpi/activity?{range}&group_by=department,day"),
        )
        .await;
    assert_eq!(answer["privacy_mode"], "team_only", "{answer}");
    assert_eq!(answer["suppressed_rows"], 2 * hidden.len(), "{answer}");
    let mut published = BTreeSet::new();
    for row in answer["rows"].as_array().unwrap() {
        let (department, day) = (
            row["department"].as_str().unwrap(),
            row["day"].as_str().unwrap(),
        );
        assert!(row.get("employee").is_none() && row.get("subject").is_none());
        let expected = &by_department_day[&(department.to_string(), day.to_string())];
        assert!(expected.people.len() >= k);
        assert_eq!(figures(row), expected.figures(), "{department} on {day}");
        published.insert(department);
    }
    assert_eq!(published, shown, "{answer}");
    // The whole tenant per day: the sum of everyone.
    let answer = api
        .ok(&hr, &format!("/v1/kpi/activity?{range}&group_by=day"))
        .await;
    let rows = answer["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{answer}");
    for row in rows {
        let day = row["day"].as_str().unwrap();
        assert_eq!(figures(row), by_day[day].figures(), "{day}");
    }
    // A whole week (its other days had nobody): shown departments only,
    // summed over both days; a week cut short is refused.
    let monday = from - Days::new(u64::from(from.weekday().num_days_from_monday()));
    let sunday = monday + Days::new(6);
    let week = api
        .ok(
            &hr,
            &format!("/v1/kpi/activity?from={monday}&to={sunday}&group_by=department,week"),
        )
        .await;
    let weeks: BTreeMap<&str, (i64, i64, i64)> = week["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["department"].as_str().unwrap(), figures(r)))
        .collect();
    let expected: BTreeMap<&str, (i64, i64, i64)> = shown
        .iter()
        .map(|d| (*d, by_department[*d].figures()))
        .collect();
    assert_eq!(weeks, expected, "{week}");
    let (status, _) = api
        .get(
            &hr,
            &format!("/v1/kpi/activity?from={from}&to={sunday}&group_by=week"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Apps: top apps only on department-day rows, only apps at least k
    // people of that department used that day (the owner's SQL counts them).
    let users = api
        .sql(
            &owner,
            &format!(
                "SELECT department, CAST(date AS VARCHAR) AS day, app, count(DISTINCT subject) AS users \
                 FROM app_usage WHERE date >= '{from}' AND date <= '{to}' GROUP BY 1, 2, 3"
            ),
        )
        .await
        .1;
    let users: BTreeMap<(String, String, String), i64> = users["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |c: &str| r[c].as_str().unwrap().to_string();
            (
                (s("department"), s("day"), s("app")),
                r["users"].as_i64().unwrap(),
            )
        })
        .collect();
    let apps = api
        .ok(
            &hr,
            &format!("/v1/kpi/apps?{range}&group_by=department,day"),
        )
        .await;
    let mut listed = 0;
    for row in apps["rows"].as_array().unwrap() {
        let (department, day) = (
            row["department"].as_str().unwrap().to_string(),
            row["day"].as_str().unwrap().to_string(),
        );
        assert!(shown.contains(department.as_str()), "{apps}");
        for app in row["top_apps"].as_array().unwrap() {
            let name = app["app"].as_str().unwrap().to_string();
            let n = users[&(department.clone(), day.clone(), name.clone())];
            assert!(n >= k as i64, "{name} of {department} on {day}: {n} users");
            listed += 1;
        }
    }
    assert!(listed > 0, "office staff share apps: {apps}");
    let totals = api
        .ok(&hr, &format!("/v1/kpi/apps?{range}&group_by=day"))
        .await;
    for row in totals["rows"].as_array().unwrap() {
        assert_eq!(row["top_apps"], json!([]), "{totals}");
    }

    // The manager of the biggest department sees it as a group; the
    // manager of the smallest sees nothing, and is told how much is hidden.
    let team = format!("/v1/kpi/activity?{range}&group_by=day");
    let answer = api.ok(&big_manager, &team).await;
    for row in answer["rows"].as_array().unwrap() {
        let day = row["day"].as_str().unwrap().to_string();
        assert_eq!(
            figures(row),
            by_department_day[&(big.clone(), day)].figures()
        );
    }
    let answer = api.ok(&small_manager, &team).await;
    assert_eq!(
        (answer["rows"].clone(), answer["suppressed_rows"].clone()),
        (json!([]), json!(2)),
        "{answer}"
    );

    // Employees still see their own figures, per day; owners see rows.
    let own = api.ok(&employee, &per_employee).await;
    let own_rows = own["rows"].as_array().unwrap();
    assert_eq!(own_rows.len(), 2, "{own}");
    assert!(
        own_rows
            .iter()
            .all(|r| r["employee"] == some_employee.as_str())
    );
    assert!(own.get("suppressed_rows").is_none());
    assert_eq!(
        api.ok(&owner, &per_employee).await["rows"],
        owner_rows["rows"]
    );

    // Every refusal is on record.
    let audit = api
        .http
        .get(format!("{}/v1/audit.csv", api.url))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusals = audit.lines().filter(|l| l.contains("privacy_mode")).count();
    assert!(refusals >= 8, "{refusals} refusals audited:\n{audit}");

    standalone.terminate();
    let status = standalone.exit_status().await;
    assert!(status.success(), "{status}");
}
