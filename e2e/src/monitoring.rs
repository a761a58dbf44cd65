//! The dashboards and alert rules of `monitoring/`, read for the tests that check them:
//! every panel's queries and legends, the SQL of the log panels, and the dashboard lint
//! rules.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every query of every panel of `dashboard` (rows' nested panels included): (panel
/// title, expression, legend format).
pub fn targets(dashboard: &Value) -> Vec<(String, String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |target| {
                    let expr = target["expr"].as_str()?.to_owned();
                    let legend = target["legendFormat"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    Some((title.clone(), expr, legend))
                })
        })
        .collect()
}

/// The SQL of every panel that reads the logs database (`${logs_database}`, a PostgreSQL
/// data source): (panel title, SQL with Grafana's macros).
pub fn sql_targets(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            panel["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |target| {
                    Some((title.clone(), target["rawSql"].as_str()?.to_owned()))
                })
        })
        .collect()
}

/// `sql` with the Grafana macros LogPipeline's panels use expanded as Grafana's
/// PostgreSQL data source expands them for the range `from`..`to` (RFC 3339):
/// `$__timeFilter(column)` is `column BETWEEN 'from' AND 'to'`.
pub fn expand_sql_macros(sql: &str, from: &str, to: &str) -> String {
    let mut expanded = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__timeFilter(") {
        expanded.push_str(&rest[..at]);
        let call = &rest[at + "$__timeFilter(".len()..];
        let end = call.find(')').unwrap_or(call.len());
        expanded.push_str(&format!(
            "{} BETWEEN '{from}' AND '{to}'",
            call[..end].trim()
        ));
        rest = call.get(end + 1..).unwrap_or_default();
    }
    expanded.push_str(rest);
    expanded
}

/// The labels a legend format names: `{{pod}} {{ route }}` names `pod` and `route`.
pub fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(name, _)| name.trim().to_owned())
        .filter(|name| !name.is_empty() && !name.starts_with('$') && !name.starts_with('.'))
        .collect()
}

/// Every panel of `dashboard` but rows, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        if panel["type"] == "row" {
            found.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            found.push(panel);
        }
    }
    found
}

/// Checks `dashboard` against the rules of Grafana's dashboard linter
/// (grafana/dashboard-linter, whose Go module the proxy here does not serve), adapted to
/// LogPipeline's labels; returns each problem found.
///
/// - the datasource is a `datasource` variable of type prometheus, and every panel and
///   target uses it; but log panels, which use the `logs_database` variable of type
///   PostgreSQL, its SQL filtered by `$__timeFilter`;
/// - `namespace` and `pipeline` variables exist, and every query filters on both (but
///   those of the operator's own series, `component="operator"`, which belong to no
///   pipeline);
/// - every panel has a title, a description and a unit, and queries;
/// - `rate`, `irate` and `increase` use `$__rate_interval`, and counters (`_total`) appear
///   only inside them;
/// - panel ids are unique, and the dashboard is not editable (it is provisioned).
pub fn lint(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let variable = |name: &str| variables.iter().find(|variable| variable["name"] == name);
    match variable("datasource") {
        Some(datasource)
            if datasource["type"] == "datasource" && datasource["query"] == "prometheus" => {}
        _ => problems.push("no `datasource` variable of type datasource for prometheus".to_owned()),
    }
    for name in ["namespace", "pipeline"] {
        if variable(name).is_none() {
            problems.push(format!("no `{name}` variable"));
        }
    }
    if dashboard["editable"] != false {
        problems.push("a provisioned dashboard must not be editable".to_owned());
    }
    let logs_database = variable("logs_database");
    let uses_variable =
        |datasource: &Value| datasource["uid"] == "${datasource}" || datasource == "${datasource}";
    let reads_logs = |datasource: &Value| {
        datasource["uid"] == "${logs_database}"
            && datasource["type"] == "grafana-postgresql-datasource"
    };
    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        let here = format!("panel {title:?}");
        if !ids.insert(panel["id"].to_string()) {
            problems.push(format!("{here}: duplicate id {}", panel["id"]));
        }
        if title.is_empty() {
            problems.push(format!("panel {}: no title", panel["id"]));
        }
        if panel["description"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{here}: no description"));
        }
        if panel["type"] != "text" {
            let unit = &panel["fieldConfig"]["defaults"]["unit"];
            if unit.as_str().is_none_or(str::is_empty) {
                problems.push(format!("{here}: no unit"));
            }
            if reads_logs(&panel["datasource"]) {
                if !logs_database.is_some_and(|variable| {
                    variable["type"] == "datasource"
                        && variable["query"] == "grafana-postgresql-datasource"
                }) {
                    problems.push(format!(
                        "{here}: no `logs_database` variable of type datasource for PostgreSQL"
                    ));
                }
                for target in panel["targets"].as_array().into_iter().flatten() {
                    if !reads_logs(&target["datasource"])
                        || !target["rawSql"]
                            .as_str()
                            .is_some_and(|sql| sql.contains("$__timeFilter("))
                    {
                        problems.push(format!(
                            "{here}: a query does not read ${{logs_database}} within $__timeFilter"
                        ));
                    }
                }
                continue;
            }
            if !uses_variable(&panel["datasource"]) {
                problems.push(format!("{here}: datasource is not ${{datasource}}"));
            }
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{here}: no queries"));
            }
            for target in targets {
                if !target["datasource"].is_null() && !uses_variable(&target["datasource"]) {
                    problems.push(format!(
                        "{here}: a query's datasource is not ${{datasource}}"
                    ));
                }
                let expr = target["expr"].as_str().unwrap_or_default();
                problems.extend(
                    lint_expr(expr)
                        .into_iter()
                        .map(|problem| format!("{here}: {problem}")),
                );
            }
        }
    }
    problems
}

/// The query rules of [`lint`] for one expression.
fn lint_expr(expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for function in ["rate(", "irate(", "increase("] {
        let mut rest = expr;
        while let Some(at) = rest.find(function) {
            let preceded_by_word = rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let call = &rest[at..];
            let end = call.find(')').unwrap_or(call.len());
            if !preceded_by_word && !call[..end].contains("[$__rate_interval]") {
                problems.push(format!(
                    "`{}` does not use $__rate_interval",
                    &call[..end.min(80)]
                ));
            }
            rest = &rest[at + function.len()..];
        }
    }
    // Every metric selector (a name followed by `{`) filters on both variables.
    let mut rest = expr;
    while let Some(brace) = rest.find('{') {
        let before = &rest[..brace];
        let name: String = before
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let close = rest[brace..]
            .find('}')
            .map_or(rest.len(), |end| brace + end);
        let matchers = &rest[brace..close];
        let is_selector = name.starts_with("logpipeline_") || name.starts_with("process_");
        // The operator's own series (reconciles, errors) belong to no pipeline.
        let operator_wide = matchers.contains(r#"component="operator""#);
        let filtered = matchers.contains("$namespace") && matchers.contains("$pipeline");
        if is_selector && !filtered && !operator_wide {
            problems.push(format!(
                "`{name}{matchers}}}` does not filter on $namespace and $pipeline"
            ));
        }
        if is_selector && name.ends_with("_total") {
            let opening = before.len() - name.len();
            let wrapped = ["rate(", "increase(", "irate(", "changes(", "resets("]
                .iter()
                .any(|function| before[..opening].ends_with(function));
            if !wrapped {
                problems.push(format!(
                    "counter `{name}` is not inside rate() or increase()"
                ));
            }
        }
        rest = &rest[close.min(rest.len())..];
        if let Some(stripped) = rest.strip_prefix('}') {
            rest = stripped;
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legends_name_labels() {
        assert_eq!(legend_labels("{{pod}} {{ route }}"), ["pod", "route"]);
        assert!(legend_labels("p99").is_empty());
    }

    #[test]
    fn time_filters_expand_as_grafana_expands_them() {
        assert_eq!(
            expand_sql_macros(
                "select 1 from logs where $__timeFilter(created_at) and x",
                "2026-12-06T01:00:00Z",
                "2026-12-06T02:00:00Z"
            ),
            "select 1 from logs where created_at BETWEEN '2026-12-06T01:00:00Z' AND '2026-12-06T02:00:00Z' and x"
        );
    }

    #[test]
    fn queries_are_linted() {
        let good = r#"sum by (route) (rate(logpipeline_api_http_requests_total{namespace=~"$namespace", pipeline=~"$pipeline"}[$__rate_interval]))"#;
        assert!(lint_expr(good).is_empty(), "{:?}", lint_expr(good));
        let bad = [
            r#"rate(logpipeline_api_http_requests_total{namespace=~"$namespace", pipeline=~"$pipeline"}[5m])"#,
            r#"logpipeline_api_http_requests_total{namespace=~"$namespace", pipeline=~"$pipeline"}"#,
            r#"logpipeline_worker_group_lag{namespace=~"$namespace"}"#,
        ];
        for expr in bad {
            assert_eq!(lint_expr(expr).len(), 1, "{expr}: {:?}", lint_expr(expr));
        }
    }
}
