//! What Flagr 1.2.3 refuses on the calls git sync makes, checked before the first call, so a
//! commit Flagr would refuse halfway is refused whole instead.
//!
//! In: one field of a desired flag. Out: `Ok`, or the problem as a sentence.
//! Never: accepts what Flagr refuses. It is stricter in two places, on purpose: constraint
//! values that Flagr stores but can never evaluate (a regex that does not compile, `LT` with a
//! string, `IN` with a scalar), and Flagr's compound forms (`{other}`, `1 OR true`), which
//! would be expression injection.
//!
//! Sources: `pkg/util/util.go` (keys, tags), `pkg/entity/constraint.go` with the `conditions`
//! parser (constraints), `swagger/index.yaml` (descriptions, percentages).

use std::sync::LazyLock;

use regex::Regex;

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid built-in pattern")
}

/// Flagr's `^[\w\d-/\.\:]+$` with Go's ASCII `\w`, at most 63 bytes.
pub fn key(what: &str, k: &str) -> Result<(), String> {
    safe(what, k, b"_-/.:", "A-Z a-z 0-9 _ - / . :")
}

/// A tag: the key's characters plus space, at most 63 bytes.
pub fn tag(v: &str) -> Result<(), String> {
    safe("tag", v, b" _-/.:", "A-Z a-z 0-9 space _ - / . :")
}

/// Flagr's `IsSafeKey`/`IsSafeValue`: ASCII letters, digits and `extra`, 1..63 bytes.
fn safe(what: &str, v: &str, extra: &[u8], shown: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} `{v}` must be 1..63 characters of {shown}"))
    }
}

/// `entityType`: empty, or a key (Flagr answers 500 otherwise).
pub fn entity_type(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Ok(())
    } else {
        key("entityType", v)
    }
}

/// Flag and segment descriptions: Flagr's API requires at least one character.
pub fn description(what: &str, d: &str) -> Result<(), String> {
    if d.is_empty() {
        return Err(format!(
            "{what} needs a description (Flagr refuses an empty one)"
        ));
    }
    Ok(())
}

/// A constraint property as the `conditions` parser reads it: an identifier with `-` parts
/// (`user-id-2`), or a path (`a.b[2].c`).
pub fn property(p: &str) -> Result<(), String> {
    static PROPERTY: LazyLock<Regex> = LazyLock::new(|| {
        let id = r"[\p{L}_][\p{L}\p{Nd}_]*";
        re(&format!(
            r"^@*{id}(?:-(?:{id}|[0-9]+))*$|^@*{id}(?:\.{id}|\[\s*[+-]?[0-9]+\s*\])+$"
        ))
    });
    if !PROPERTY.is_match(p) {
        return Err(format!(
            "constraint property `{p}` must be a name like `user_id`, `user-id` or `a.b[0]`"
        ));
    }
    Ok(())
}

/// The literal a constraint value holds.
#[derive(Debug, PartialEq, Eq)]
enum Literal {
    Number,
    Bool,
    String,
    Array,
}

fn literal(v: &str) -> Result<Literal, String> {
    static NUMBER: LazyLock<Regex> =
        LazyLock::new(|| re(r"^-?\s*(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"));
    static STRING: LazyLock<Regex> = LazyLock::new(|| re(r#"^"(?:[^"\\\n]|\\[^\n])*"$"#));
    if NUMBER.is_match(v) {
        return Ok(Literal::Number);
    }
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        return Ok(Literal::Bool);
    }
    if STRING.is_match(v) {
        return Ok(Literal::String);
    }
    if v.starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(v)
            .map_err(|e| format!("`{v}` is not a JSON array of strings or numbers: {e}"))?;
        return match items.first() {
            None => Err("an empty array matches nothing".into()),
            Some(first) if first.is_string() && items.iter().all(|i| i.is_string()) => {
                Ok(Literal::Array)
            }
            Some(first) if first.is_number() && items.iter().all(|i| i.is_number()) => {
                Ok(Literal::Array)
            }
            Some(_) => Err(format!("`{v}` must hold only strings or only numbers")),
        };
    }
    Err(format!(
        "`{v}` is not a number, true/false, a \"quoted string\" or a [\"list\"]"
    ))
}

/// A constraint value for its operator.
pub fn value(operator: &str, v: &str) -> Result<(), String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("constraint value is empty".into());
    }
    let lit = literal(v).map_err(|e| format!("constraint value {e}"))?;
    let wanted = match operator {
        "LT" | "LTE" | "GT" | "GTE" => (lit == Literal::Number).then_some(()).ok_or("a number"),
        "IN" | "NOTIN" => (lit == Literal::Array).then_some(()).ok_or("a [\"list\"]"),
        "CONTAINS" | "NOTCONTAINS" => matches!(lit, Literal::String | Literal::Number)
            .then_some(())
            .ok_or("a \"string\" or a number"),
        "EQ" | "NEQ" => (lit != Literal::Array)
            .then_some(())
            .ok_or("a single value, not a list"),
        "EREG" | "NEREG" => return regex_value(v, lit),
        other => return Err(format!("unknown constraint operator `{other}`")),
    };
    wanted.map_err(|w| format!("{operator} needs {w}, not `{v}`"))
}

/// EREG/NEREG: a quoted pattern that Flagr's parser can re-read as a regex and that compiles.
fn regex_value(v: &str, lit: Literal) -> Result<(), String> {
    if lit != Literal::String {
        return Err(format!("EREG/NEREG need a \"quoted\" pattern, not `{v}`"));
    }
    let pattern = &v[1..v.len() - 1];
    if pattern.is_empty() {
        return Err("EREG/NEREG need a non-empty pattern".into());
    }
    // Without a `/`, Flagr turns `"pat"` into `/pat/` and re-parses it: quotes inside break that.
    if !pattern.contains('/') && pattern.contains(['"', '\'', '`']) {
        return Err(format!(
            "EREG/NEREG pattern `{pattern}` cannot hold quotes (Flagr cannot parse it)"
        ));
    }
    let unescaped = pattern.replace("\\\"", "\"");
    Regex::new(&unescaped)
        .map(|_| ())
        .map_err(|e| format!("EREG/NEREG pattern `{pattern}` does not compile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tags_as_flagr_reads_them() {
        for ok in ["checkout", "a-b_c/d.e:f", "-", &"a".repeat(63)] {
            assert!(key("key", ok).is_ok(), "{ok}");
        }
        for bad in ["", "é", "a b", "a+b", "a,b", &"a".repeat(64)] {
            assert!(key("key", bad).is_err(), "{bad}");
        }
        assert!(tag("web app").is_ok());
        assert!(tag(" ").is_ok());
        for bad in ["", "a,b", "é", &"t".repeat(64)] {
            assert!(tag(bad).is_err(), "{bad}");
        }
        assert!(entity_type("").is_ok());
        assert!(entity_type("user id").is_err());
    }

    #[test]
    fn properties_as_the_conditions_parser_reads_them() {
        for ok in [
            "user_id",
            "user-id-2",
            "a-12",
            "@a",
            "été",
            "a.b.c[2].d",
            "a[-1]",
        ] {
            assert!(property(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a b", "a:b", "a/b", "1a", "a..b", "a.1", "a-", "a--b", "a-1b", "a-b.c", "a[]",
            "a[x]", "@", "a@b", "{a}",
        ] {
            assert!(property(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_per_operator() {
        let ok = [
            ("IN", r#"["CA","NY"]"#),
            ("NOTIN", "[1,2]"),
            ("EQ", r#""CA""#),
            ("EQ", "1"),
            ("NEQ", "TRUE"),
            ("LT", "10"),
            ("GTE", "-3"),
            ("GT", "10.5"),
            ("LTE", "1e3"),
            ("CONTAINS", r#""a""#),
            ("NOTCONTAINS", "1"),
            ("EREG", r#""^.*@example\.com$""#),
            ("NEREG", r#""\d+""#),
            ("EREG", r#""a/b""#),
            ("EQ", r#""a\"b""#),
        ];
        for (op, v) in ok {
            assert!(value(op, v).is_ok(), "{op} {v}: {:?}", value(op, v));
        }
        let bad = [
            ("IN", "CA,NY"),
            ("IN", r#""CA","NY""#),
            ("IN", "[CA,NY]"),
            ("IN", "['CA']"),
            ("IN", "[]"),
            ("IN", r#"["CA",1]"#),
            ("IN", "[true]"),
            ("IN", r#""CA""#),
            ("EQ", "CA"),
            ("EQ", "'CA'"),
            ("EQ", "null"),
            ("EQ", r#""CA" "NY""#),
            ("EQ", "[1]"),
            ("EQ", "   "),
            ("EQ", "{other}"),
            ("EQ", "1 OR true"),
            ("LT", "abc"),
            ("LT", "0x1F"),
            ("LT", "+1"),
            ("LT", r#""10""#),
            ("CONTAINS", "a"),
            ("CONTAINS", "[1]"),
            ("EREG", "^abc$"),
            ("EREG", r#""a'b""#),
            ("EREG", r#""""#),
            ("EREG", r#""[a""#),
            ("EREG", "1"),
            ("LIKE", "1"),
        ];
        for (op, v) in bad {
            assert!(value(op, v).is_err(), "{op} {v} passed");
        }
    }
}
