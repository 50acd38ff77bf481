//! Flagr's route table: which calls mutate a flag, which evaluate, which are plain passthrough.
//!
//! In: a method and a request path (with Flagr's optional `FLAGR_WEB_PREFIX`).
//! Out: a [`Route`] naming the mutation and its path ids, an evaluation, an exposure, or passthrough.
//! Never: allocates for passthrough traffic or looks at anything but method and path.

use http::Method;

/// One of Flagr's 19 mutating endpoints (reference §1), numbered as there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Mutation {
    /// 1. `POST /flags`
    CreateFlag,
    /// 2. `PUT /flags/{flag}`
    PutFlag { flag: i64 },
    /// 3. `DELETE /flags/{flag}`
    DeleteFlag { flag: i64 },
    /// 4. `PUT /flags/{flag}/restore`
    RestoreFlag { flag: i64 },
    /// 5. `POST /flags/{flag}/duplicate`
    DuplicateFlag { flag: i64 },
    /// 6. `PUT /flags/{flag}/enabled`
    SetEnabled { flag: i64 },
    /// 7. `POST /flags/{flag}/tags`
    CreateTag { flag: i64 },
    /// 8. `DELETE /flags/{flag}/tags/{tag}`
    DeleteTag { flag: i64, tag: i64 },
    /// 9. `POST /flags/{flag}/variants`
    CreateVariant { flag: i64 },
    /// 10. `PUT /flags/{flag}/variants/{variant}`
    PutVariant { flag: i64, variant: i64 },
    /// 11. `DELETE /flags/{flag}/variants/{variant}`
    DeleteVariant { flag: i64, variant: i64 },
    /// 12. `POST /flags/{flag}/segments`
    CreateSegment { flag: i64 },
    /// 13. `PUT /flags/{flag}/segments/reorder`
    ReorderSegments { flag: i64 },
    /// 14. `PUT /flags/{flag}/segments/{segment}`
    PutSegment { flag: i64, segment: i64 },
    /// 15. `DELETE /flags/{flag}/segments/{segment}`
    DeleteSegment { flag: i64, segment: i64 },
    /// 16. `POST /flags/{flag}/segments/{segment}/constraints`
    CreateConstraint { flag: i64, segment: i64 },
    /// 17. `PUT /flags/{flag}/segments/{segment}/constraints/{constraint}`
    PutConstraint {
        flag: i64,
        segment: i64,
        constraint: i64,
    },
    /// 18. `DELETE /flags/{flag}/segments/{segment}/constraints/{constraint}`
    DeleteConstraint {
        flag: i64,
        segment: i64,
        constraint: i64,
    },
    /// 19. `PUT /flags/{flag}/segments/{segment}/distributions`
    PutDistributions { flag: i64, segment: i64 },
}

impl Mutation {
    /// The flag in the path; `None` for create (the id comes from the response).
    pub fn path_flag(&self) -> Option<i64> {
        use Mutation::*;
        match *self {
            CreateFlag => None,
            PutFlag { flag }
            | DeleteFlag { flag }
            | RestoreFlag { flag }
            | DuplicateFlag { flag }
            | SetEnabled { flag }
            | CreateTag { flag }
            | DeleteTag { flag, .. }
            | CreateVariant { flag }
            | PutVariant { flag, .. }
            | DeleteVariant { flag, .. }
            | CreateSegment { flag }
            | ReorderSegments { flag }
            | PutSegment { flag, .. }
            | DeleteSegment { flag, .. }
            | CreateConstraint { flag, .. }
            | PutConstraint { flag, .. }
            | DeleteConstraint { flag, .. }
            | PutDistributions { flag, .. } => Some(flag),
        }
    }

    /// True when the response names a new flag (create, duplicate): events belong to it.
    pub fn creates_flag(&self) -> bool {
        matches!(self, Mutation::CreateFlag | Mutation::DuplicateFlag { .. })
    }

    /// A short stable name for logs and metrics.
    pub fn name(&self) -> &'static str {
        use Mutation::*;
        match self {
            CreateFlag => "create_flag",
            PutFlag { .. } => "put_flag",
            DeleteFlag { .. } => "delete_flag",
            RestoreFlag { .. } => "restore_flag",
            DuplicateFlag { .. } => "duplicate_flag",
            SetEnabled { .. } => "set_enabled",
            CreateTag { .. } => "create_tag",
            DeleteTag { .. } => "delete_tag",
            CreateVariant { .. } => "create_variant",
            PutVariant { .. } => "put_variant",
            DeleteVariant { .. } => "delete_variant",
            CreateSegment { .. } => "create_segment",
            ReorderSegments { .. } => "reorder_segments",
            PutSegment { .. } => "put_segment",
            DeleteSegment { .. } => "delete_segment",
            CreateConstraint { .. } => "create_constraint",
            PutConstraint { .. } => "put_constraint",
            DeleteConstraint { .. } => "delete_constraint",
            PutDistributions { .. } => "put_distributions",
        }
    }
}

/// Which evaluation endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Evaluation {
    /// `POST /evaluation` or `GET /evaluation?json=`
    Single,
    /// `POST /evaluation/batch` or `GET /evaluation/batch?json=`
    Batch,
}

/// What a request is, as far as flaghook cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Mutation(Mutation),
    Evaluation(Evaluation),
    Exposure,
    Passthrough,
}

impl Route {
    /// The bounded label used in metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Route::Mutation(_) => "mutation",
            Route::Evaluation(_) => "evaluation",
            Route::Exposure => "exposure",
            Route::Passthrough => "passthrough",
        }
    }
}

/// Classifies requests; holds the API root (`{prefix}/api/v1`).
#[derive(Clone, Debug)]
pub struct RouteTable {
    root: String,
    /// `{root}/evaluation` and `{root}/evaluation/batch`, most of the traffic.
    single: String,
    batch: String,
}

impl RouteTable {
    /// `prefix` is Flagr's `FLAGR_WEB_PREFIX` (`""` or `/something`).
    pub fn new(prefix: &str) -> Self {
        let root = format!("{prefix}/api/v1");
        Self {
            single: format!("{root}/evaluation"),
            batch: format!("{root}/evaluation/batch"),
            root,
        }
    }

    /// The API root with the prefix, e.g. `/flagr/api/v1`.
    pub fn api_root(&self) -> &str {
        &self.root
    }

    pub fn classify(&self, method: &Method, path: &str) -> Route {
        // Evaluations, nearly every request, by one comparison each (their paths are clean).
        if *method == Method::POST || *method == Method::GET {
            if path == self.single {
                return Route::Evaluation(Evaluation::Single);
            }
            if path == self.batch {
                return Route::Evaluation(Evaluation::Batch);
            }
        }
        // Flagr's router cleans the path and unescapes it before matching, so `//flags/1/enabled/`
        // and `%31` reach the same handler: match what Flagr matches. Clean paths (nearly all)
        // are matched without allocating.
        self.classify_clean(method, &cleaned(path))
    }

    fn classify_clean(&self, method: &Method, path: &str) -> Route {
        let Some(rest) = path.strip_prefix(self.root.as_str()) else {
            return Route::Passthrough;
        };
        let Some(rest) = rest.strip_prefix('/') else {
            return Route::Passthrough;
        };
        let mut seg = [""; 8];
        let mut n = 0;
        for s in rest.split('/') {
            if n == seg.len() {
                return Route::Passthrough;
            }
            seg[n] = s;
            n += 1;
        }
        let seg = &seg[..n];
        let id = |s: &str| -> Option<i64> {
            // Flagr's ids are positive int64; anything else is a 4xx from Flagr, never a mutation.
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse::<i64>().ok().filter(|v| *v > 0)
        };
        use Mutation as M;
        let m = |x: M| Route::Mutation(x);
        let (get, post, put, delete) = (
            method == Method::GET,
            method == Method::POST,
            method == Method::PUT,
            method == Method::DELETE,
        );
        match seg {
            ["evaluation"] if post || get => Route::Evaluation(Evaluation::Single),
            ["evaluation", "batch"] if post || get => Route::Evaluation(Evaluation::Batch),
            ["exposures"] if post => Route::Exposure,
            ["flags"] if post => m(M::CreateFlag),
            ["flags", f] => match id(f) {
                Some(flag) if put => m(M::PutFlag { flag }),
                Some(flag) if delete => m(M::DeleteFlag { flag }),
                _ => Route::Passthrough,
            },
            ["flags", f, action] => {
                let Some(flag) = id(f) else {
                    return Route::Passthrough;
                };
                match *action {
                    "restore" if put => m(M::RestoreFlag { flag }),
                    "duplicate" if post => m(M::DuplicateFlag { flag }),
                    "enabled" if put => m(M::SetEnabled { flag }),
                    "tags" if post => m(M::CreateTag { flag }),
                    "variants" if post => m(M::CreateVariant { flag }),
                    "segments" if post => m(M::CreateSegment { flag }),
                    _ => Route::Passthrough,
                }
            }
            ["flags", f, kind, x] => {
                let Some(flag) = id(f) else {
                    return Route::Passthrough;
                };
                // `reorder` is a literal that shares the `segments/{id}` position: match it first.
                if *kind == "segments" && *x == "reorder" {
                    return if put {
                        m(M::ReorderSegments { flag })
                    } else {
                        Route::Passthrough
                    };
                }
                let Some(x) = id(x) else {
                    return Route::Passthrough;
                };
                match *kind {
                    "tags" if delete => m(M::DeleteTag { flag, tag: x }),
                    "variants" if put => m(M::PutVariant { flag, variant: x }),
                    "variants" if delete => m(M::DeleteVariant { flag, variant: x }),
                    "segments" if put => m(M::PutSegment { flag, segment: x }),
                    "segments" if delete => m(M::DeleteSegment { flag, segment: x }),
                    _ => Route::Passthrough,
                }
            }
            ["flags", f, "segments", s, kind] => match (id(f), id(s)) {
                (Some(flag), Some(segment)) => match *kind {
                    "constraints" if post => m(M::CreateConstraint { flag, segment }),
                    "distributions" if put => m(M::PutDistributions { flag, segment }),
                    _ => Route::Passthrough,
                },
                _ => Route::Passthrough,
            },
            ["flags", f, "segments", s, "constraints", c] => match (id(f), id(s), id(c)) {
                (Some(flag), Some(segment), Some(constraint)) if put => m(M::PutConstraint {
                    flag,
                    segment,
                    constraint,
                }),
                (Some(flag), Some(segment), Some(constraint)) if delete => m(M::DeleteConstraint {
                    flag,
                    segment,
                    constraint,
                }),
                _ => Route::Passthrough,
            },
            _ => Route::Passthrough,
        }
    }
}

/// The path as Flagr's router matches it (borrowed when it is already clean).
pub fn cleaned(path: &str) -> std::borrow::Cow<'_, str> {
    if needs_cleaning(path) {
        std::borrow::Cow::Owned(clean_path(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// True when a path is not already in the form Flagr's router matches on.
fn needs_cleaning(path: &str) -> bool {
    // One pass over the bytes: this runs for every proxied request.
    let b = path.as_bytes();
    b.len() > 1 && b[b.len() - 1] == b'/'
        || b.iter()
            .enumerate()
            .any(|(i, &c)| c == b'%' || (c == b'/' && matches!(b.get(i + 1), Some(b'/' | b'.'))))
}

/// Go's `path.Clean` after percent-decoding each segment: empty and `.` segments vanish, `..`
/// removes the one before it, no trailing slash. Undecodable escapes are kept as they are.
fn clean_path(path: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for seg in path.split('/') {
        let seg = percent_decode(seg);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

fn percent_decode(seg: &str) -> String {
    if !seg.contains('%') {
        return seg.to_string();
    }
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| seg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mutation as M;

    fn c(method: &str, path: &str) -> Route {
        RouteTable::new("").classify(&method.parse().unwrap(), path)
    }
    fn mu(method: &str, path: &str) -> Mutation {
        match c(method, path) {
            Route::Mutation(m) => m,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn all_nineteen_mutations() {
        let b = "/api/v1/flags";
        assert_eq!(mu("POST", b), M::CreateFlag);
        assert_eq!(mu("PUT", &format!("{b}/7")), M::PutFlag { flag: 7 });
        assert_eq!(mu("DELETE", &format!("{b}/7")), M::DeleteFlag { flag: 7 });
        assert_eq!(
            mu("PUT", &format!("{b}/7/restore")),
            M::RestoreFlag { flag: 7 }
        );
        assert_eq!(
            mu("POST", &format!("{b}/7/duplicate")),
            M::DuplicateFlag { flag: 7 }
        );
        assert_eq!(
            mu("PUT", &format!("{b}/7/enabled")),
            M::SetEnabled { flag: 7 }
        );
        assert_eq!(mu("POST", &format!("{b}/7/tags")), M::CreateTag { flag: 7 });
        assert_eq!(
            mu("DELETE", &format!("{b}/7/tags/3")),
            M::DeleteTag { flag: 7, tag: 3 }
        );
        assert_eq!(
            mu("POST", &format!("{b}/7/variants")),
            M::CreateVariant { flag: 7 }
        );
        assert_eq!(
            mu("PUT", &format!("{b}/7/variants/2")),
            M::PutVariant {
                flag: 7,
                variant: 2
            }
        );
        assert_eq!(
            mu("DELETE", &format!("{b}/7/variants/2")),
            M::DeleteVariant {
                flag: 7,
                variant: 2
            }
        );
        assert_eq!(
            mu("POST", &format!("{b}/7/segments")),
            M::CreateSegment { flag: 7 }
        );
        assert_eq!(
            mu("PUT", &format!("{b}/7/segments/reorder")),
            M::ReorderSegments { flag: 7 }
        );
        assert_eq!(
            mu("PUT", &format!("{b}/7/segments/4")),
            M::PutSegment {
                flag: 7,
                segment: 4
            }
        );
        assert_eq!(
            mu("DELETE", &format!("{b}/7/segments/4")),
            M::DeleteSegment {
                flag: 7,
                segment: 4
            }
        );
        assert_eq!(
            mu("POST", &format!("{b}/7/segments/4/constraints")),
            M::CreateConstraint {
                flag: 7,
                segment: 4
            }
        );
        assert_eq!(
            mu("PUT", &format!("{b}/7/segments/4/constraints/9")),
            M::PutConstraint {
                flag: 7,
                segment: 4,
                constraint: 9
            }
        );
        assert_eq!(
            mu("DELETE", &format!("{b}/7/segments/4/constraints/9")),
            M::DeleteConstraint {
                flag: 7,
                segment: 4,
                constraint: 9
            }
        );
        assert_eq!(
            mu("PUT", &format!("{b}/7/segments/4/distributions")),
            M::PutDistributions {
                flag: 7,
                segment: 4
            }
        );
    }

    #[test]
    fn paths_are_cleaned_as_flagrs_router_does() {
        let b = "/api/v1/flags";
        assert_eq!(
            mu("PUT", &format!("{b}/1/enabled/")),
            M::SetEnabled { flag: 1 }
        );
        assert_eq!(mu("PUT", &format!("{b}/7/")), M::PutFlag { flag: 7 });
        assert_eq!(mu("POST", &format!("{b}/")), M::CreateFlag);
        assert_eq!(
            mu("PUT", "/api/v1//flags/1/enabled"),
            M::SetEnabled { flag: 1 }
        );
        assert_eq!(
            mu("PUT", &format!("{b}/%31/enabled")),
            M::SetEnabled { flag: 1 }
        );
        assert_eq!(
            mu("DELETE", &format!("{b}/./7/")),
            M::DeleteFlag { flag: 7 }
        );
        assert_eq!(mu("PUT", &format!("{b}/9/../7")), M::PutFlag { flag: 7 });
        assert_eq!(
            mu("PUT", &format!("{b}/3/segments/%72eorder")),
            M::ReorderSegments { flag: 3 }
        );
        // A bad escape stays as it is: no mutation, Flagr answers it.
        assert_eq!(c("PUT", &format!("{b}/%zz/enabled")), Route::Passthrough);
        assert_eq!(c("PUT", &format!("{b}/1%/enabled")), Route::Passthrough);
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("//"), "/");
    }

    #[test]
    fn literals_beat_ids() {
        // reorder is not segment id "reorder", and DELETE on it is nothing Flagr has.
        assert_eq!(
            c("DELETE", "/api/v1/flags/7/segments/reorder"),
            Route::Passthrough
        );
        assert_eq!(
            c("GET", "/api/v1/flags/snapshots/max_id"),
            Route::Passthrough
        );
        assert_eq!(c("PUT", "/api/v1/flags/snapshots"), Route::Passthrough);
        assert_eq!(
            c("DELETE", "/api/v1/flags/entity_types"),
            Route::Passthrough
        );
        assert_eq!(c("GET", "/api/v1/flags/entity_types"), Route::Passthrough);
    }

    #[test]
    fn reads_and_unknowns_pass_through() {
        for (m, p) in [
            ("GET", "/api/v1/flags"),
            ("GET", "/api/v1/flags/7"),
            ("GET", "/api/v1/flags/7/snapshots"),
            ("GET", "/api/v1/flags/7/segments"),
            ("GET", "/api/v1/health"),
            ("GET", "/api/v1/export/eval_cache/json"),
            ("GET", "/api/v1/tags"),
            ("PATCH", "/api/v1/flags/7"),
            ("PUT", "/api/v1/flags/0"),
            ("PUT", "/api/v1/flags/-1"),
            ("PUT", "/api/v1/flags/+1"),
            ("PUT", "/api/v1/flags/99999999999999999999"),
            ("POST", "/api/v2/flags"),
            ("POST", "/api/v1flags"),
            ("POST", "/"),
            ("GET", "/static/app.js"),
            ("PUT", "/api/v1/flags/7/segments/4/constraints/9/x/y/z"),
            ("GET", "/api/v1/exposures"),
            ("DELETE", "/api/v1/evaluation"),
        ] {
            assert_eq!(c(m, p), Route::Passthrough, "{m} {p}");
        }
    }

    #[test]
    fn evaluations_and_exposures() {
        use Evaluation::*;
        assert_eq!(c("POST", "/api/v1/evaluation"), Route::Evaluation(Single));
        assert_eq!(c("GET", "/api/v1/evaluation"), Route::Evaluation(Single));
        assert_eq!(
            c("POST", "/api/v1/evaluation/batch"),
            Route::Evaluation(Batch)
        );
        assert_eq!(
            c("GET", "/api/v1/evaluation/batch"),
            Route::Evaluation(Batch)
        );
        assert_eq!(c("POST", "/api/v1/exposures"), Route::Exposure);
    }

    #[test]
    fn prefix_is_honoured() {
        let t = RouteTable::new("/flagr");
        assert_eq!(
            t.classify(&Method::POST, "/flagr/api/v1/flags"),
            Route::Mutation(M::CreateFlag)
        );
        assert_eq!(
            t.classify(&Method::POST, "/api/v1/flags"),
            Route::Passthrough
        );
        assert_eq!(
            t.classify(&Method::POST, "/flagrx/api/v1/flags"),
            Route::Passthrough
        );
        assert_eq!(t.api_root(), "/flagr/api/v1");
        // The evaluations' quick match answers as the general one does, prefix and all.
        assert_eq!(
            t.classify(&Method::POST, "/flagr/api/v1/evaluation"),
            Route::Evaluation(Evaluation::Single)
        );
        for (m, p) in [
            ("POST", "/flagr/api/v1/evaluation"),
            ("GET", "/flagr/api/v1/evaluation/batch"),
            ("POST", "/api/v1/evaluation"),
            ("PUT", "/flagr/api/v1/evaluation"),
            ("POST", "/flagr/api/v1/evaluation/"),
        ] {
            let m: Method = m.parse().unwrap();
            assert_eq!(
                t.classify(&m, p),
                t.classify_clean(&m, &cleaned(p)),
                "{m} {p}"
            );
        }
    }

    #[test]
    fn path_flag_and_names() {
        assert_eq!(M::CreateFlag.path_flag(), None);
        assert_eq!(M::DeleteTag { flag: 3, tag: 1 }.path_flag(), Some(3));
        assert!(M::DuplicateFlag { flag: 1 }.creates_flag());
        assert!(!M::PutFlag { flag: 1 }.creates_flag());
        assert_eq!(Route::Exposure.class(), "exposure");
    }
}
