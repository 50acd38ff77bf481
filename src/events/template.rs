//! Bodies from templates: `format = "template"` (Jinja syntax, minijinja) and the chat presets
//! built on it (`slack`, `teams`, `discord`).
//!
//! In: a template's source, then one event's variables: every field of the `flaghook` payload
//! (`id, event, flag_id, flag_key, timestamp, actor, source, commit, changes, data`) plus
//! `summary` (the event as a sentence) and `flag_url` (the flag in Flagr's UI, when
//! `flagr.ui_url` is set). Out: the rendered body.
//! Never: renders an undefined variable as empty: printing one is an error, so a typo is seen
//! at once (testing one, `{% if changes.rolloutPercent %}`, is allowed: most events lack it).
//! The presets escape what people wrote (actors, descriptions, values) for each chat's markup,
//! so a segment named `<!channel>` pings nobody.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// A template that does not parse or render: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

impl From<minijinja::Error> for TemplateError {
    fn from(e: minijinja::Error) -> Self {
        TemplateError {
            line: e.line().unwrap_or(0),
            message: match e.detail() {
                Some(d) => format!("{}: {d}", e.kind()),
                None => e.kind().to_string(),
            },
        }
    }
}

/// A parsed template, ready to render.
pub struct Template {
    env: Environment<'static>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Template")
    }
}

const NAME: &str = "body";

impl Template {
    pub fn compile(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.add_filter("slack_escape", slack_escape);
        env.add_filter("markdown_escape", markdown_escape);
        env.add_template_owned(NAME, source.to_string())?;
        Ok(Self { env })
    }

    pub fn render(&self, vars: &Value) -> Result<String, TemplateError> {
        Ok(self.env.get_template(NAME)?.render(vars)?)
    }

    /// A preset's template (`slack`, `teams`, `discord`).
    pub fn preset(name: &str) -> Option<Self> {
        let source = match name {
            "slack" => SLACK,
            "teams" => TEAMS,
            "discord" => DISCORD,
            _ => return None,
        };
        Self::compile(source).ok()
    }
}

/// Slack's mrkdwn control characters, escaped as Slack documents (`&`, `<`, `>`).
fn slack_escape(s: String) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Discord's markdown control characters, backslash-escaped as Discord documents, so a
/// description like `[Open](https://evil.example)` shows as written instead of as a link
/// (a broken `[…]` is enough to break a link; `(` and `-` stay as they are).
fn markdown_escape(s: String) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(c, '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '[' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Chat services refuse long messages (Discord at 2,000 characters, Slack's sections at 3,000):
/// the sentence is cut well before.
const SUMMARY_MAX_CHARS: usize = 1500;

/// The variables of one event: the seed payload's fields, `summary` and `flag_url`.
pub fn variables(payload: &Value, ui_url: &str) -> Value {
    let mut vars = payload.clone();
    let sentence = super::summary::sentence(
        payload["event"].as_str().unwrap_or(""),
        &payload["changes"],
        &payload["data"],
        payload["actor"].as_str().unwrap_or(""),
        payload["flag_key"].as_str().unwrap_or(""),
    );
    let url = if ui_url.is_empty() {
        Value::Null
    } else {
        Value::String(format!(
            "{}/#/flags/{}",
            ui_url.trim_end_matches('/'),
            payload["flag_id"]
        ))
    };
    let sentence = match sentence.char_indices().nth(SUMMARY_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &sentence[..cut]),
        None => sentence,
    };
    if let Value::Object(m) = &mut vars {
        m.insert("summary".into(), Value::String(sentence));
        m.insert("flag_url".into(), url);
        m.entry("commit").or_insert(Value::Null);
    }
    vars
}

/// Slack incoming webhook: `text` for notifications, `blocks` for the message.
const SLACK: &str = r#"{"text": {{ summary | slack_escape | tojson }},
 "blocks": [
  {"type": "section", "text": {"type": "mrkdwn", "text": {{ ((summary | slack_escape) ~ ((" <" ~ flag_url ~ "|open in Flagr>") if flag_url else "")) | tojson }}}},
  {"type": "context", "elements": [{"type": "mrkdwn", "text": {{ ("`" ~ event ~ "` · " ~ (flag_key | slack_escape) ~ " · " ~ timestamp) | tojson }}}]}
 ]}"#;

/// A Teams Workflows webhook carrying an Adaptive Card.
const TEAMS: &str = r#"{"type": "message",
 "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
  "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4",
   "body": [
    {"type": "TextBlock", "text": {{ summary | tojson }}, "wrap": true},
    {"type": "FactSet", "facts": [
      {"title": "Flag", "value": {{ flag_key | tojson }}},
      {"title": "Event", "value": {{ event | tojson }}},
      {"title": "By", "value": {{ (actor or "someone") | tojson }}},
      {"title": "At", "value": {{ timestamp | tojson }}}]}]
   {%- if flag_url %},
   "actions": [{"type": "Action.OpenUrl", "title": "Open in Flagr", "url": {{ flag_url | tojson }}}]
   {%- endif %}}}]}"#;

/// A Discord webhook: `content` and one embed.
const DISCORD: &str = r#"{"content": {{ summary | markdown_escape | tojson }}, "allowed_mentions": {"parse": []},
 "embeds": [{"title": {{ flag_key | tojson }}, "description": {{ event | markdown_escape | tojson }}, "timestamp": {{ timestamp | tojson }}
  {%- if flag_url %}, "url": {{ flag_url | tojson }}{% endif %}}]}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload() -> Value {
        json!({"id": "evt_1", "event": "segment.rollout_percent.updated", "flag_id": 7,
            "flag_key": "checkout", "timestamp": "2026-12-02T10:00:00.000Z",
            "actor": "alice@example.com", "source": "api",
            "changes": {"segment_id": 3, "rolloutPercent": {"before": 20, "after": 100}},
            "data": {"key": "checkout", "segments": [{"id": 3, "description": "beta"}]}})
    }

    #[test]
    fn presets_render_json_a_person_can_read() {
        let vars = variables(&payload(), "https://flagr.example.com/");
        for name in ["slack", "teams", "discord"] {
            let out = Template::preset(name).unwrap().render(&vars).unwrap();
            let v: Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{name}: {e}\n{out}"));
            let text = v.to_string();
            assert!(
                text.contains(
                    "alice@example.com rolled out segment “beta” of checkout from 20 % to 100 %"
                ),
                "{name}: {text}"
            );
            assert!(
                text.contains("https://flagr.example.com/#/flags/7"),
                "{name}: {text}"
            );
        }
        let without_ui = variables(&payload(), "");
        let out = Template::preset("discord")
            .unwrap()
            .render(&without_ui)
            .unwrap();
        assert!(!serde_json::from_str::<Value>(&out).unwrap()["embeds"][0]
            .as_object()
            .unwrap()
            .contains_key("url"));
    }

    #[test]
    fn what_people_wrote_cannot_ping_or_disguise_links() {
        let mut p = payload();
        p["data"]["segments"][0]["description"] = json!("<!channel> & <https://evil.example|Open>");
        let vars = variables(&p, "");
        let slack: Value =
            serde_json::from_str(&Template::preset("slack").unwrap().render(&vars).unwrap())
                .unwrap();
        let text = slack["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(
            text.contains("&lt;!channel&gt; &amp; &lt;https://evil.example|Open&gt;"),
            "{text}"
        );
        assert!(!text.contains("<!channel>"));
        let discord: Value =
            serde_json::from_str(&Template::preset("discord").unwrap().render(&vars).unwrap())
                .unwrap();
        assert_eq!(discord["allowed_mentions"]["parse"], json!([]));
        p["data"]["segments"][0]["description"] = json!("[Open](https://evil.example) **now**");
        let vars = variables(&p, "");
        let discord: Value =
            serde_json::from_str(&Template::preset("discord").unwrap().render(&vars).unwrap())
                .unwrap();
        let content = discord["content"].as_str().unwrap();
        assert!(
            content.contains(r"\[Open\](https://evil.example) \*\*now\*\*"),
            "{content}"
        );
        // Long sentences are cut before any service refuses them.
        p["data"]["segments"][0]["description"] = json!("x".repeat(5000));
        let long = variables(&p, "");
        assert!(long["summary"].as_str().unwrap().chars().count() <= SUMMARY_MAX_CHARS + 1);
        // Testing a field most events lack is fine; printing one is not.
        let t = Template::compile("{% if changes.nothing %}x{% endif %}ok").unwrap();
        assert_eq!(t.render(&vars).unwrap(), "ok");
    }

    #[test]
    fn errors_name_the_line() {
        let e = Template::compile("ok\n{{ flag_key }\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let t = Template::compile("{{ flag_key }}\n{{ no_such_thing }}").unwrap();
        let e = t.render(&variables(&payload(), "")).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert_eq!(
            Template::compile("{{ summary }} by {{ actor }} ({{ changes.rolloutPercent.after }} %)")
                .unwrap()
                .render(&variables(&payload(), ""))
                .unwrap(),
            "alice@example.com rolled out segment “beta” of checkout from 20 % to 100 % by alice@example.com (100 %)"
        );
    }
}
