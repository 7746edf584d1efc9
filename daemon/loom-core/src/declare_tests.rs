use super::*;

fn decls(text: &str) -> BTreeMap<String, WeaverDecl> {
    toml::from_str::<ApplyFile>(text).unwrap().weavers
}

fn no_files(_: &Path) -> Result<String, String> {
    Err("no files in this test".into())
}

#[test]
fn a_declared_agent_loop_and_a_command_resolve() {
    let d = decls(
        r#"
[weavers.fixer]
repo = "https://example.com/a.git"
prompt_file = "/etc/loom/fix.md"
model = "anthropic/claude-sonnet-4-5"
memory = "2G"
cpus = 1
egress.allow = ["github.com:443"]
agent.max_iterations = 5
[weavers.sleeper]
command = ["sleep", "100"]
restart = "on-failure"
[weavers.off]
enable = false
command = ["true"]
"#,
    );
    let got = declared_weavers(&d, &WeaverDefaults::default(), |p| {
        assert_eq!(p, Path::new("/etc/loom/fix.md"));
        Ok("fix the tests".into())
    })
    .unwrap();
    let names: Vec<_> = got.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["fixer", "sleeper"]);
    let fixer = &got[0];
    assert_eq!(fixer.spec.name, "fixer");
    assert_eq!(fixer.spec.memory.0, 2 << 30);
    assert_eq!(fixer.spec.egress, ["github.com:443"]);
    let agent = fixer.spec.agent.as_ref().unwrap();
    assert_eq!((agent.prompt.as_str(), agent.max_iterations), ("fix the tests", Some(5)));
    assert_eq!(got[1].spec.command, ["sleep", "100"]);
    assert_eq!(fixer.hash.len(), 64);
}

fn err_of(text: &str) -> String {
    declared_weavers(&decls(text), &WeaverDefaults::default(), no_files).unwrap_err().to_string()
}

#[test]
fn bad_declarations_name_the_weaver_and_the_fix() {
    let e = err_of("[weavers.a]\ncommand = [\"x\"]\nmemory = \"lots\"");
    assert!(e.starts_with("[weavers.a]: ") && e.contains("lots"), "{e}");
    let e = err_of("[weavers.b]\nprompt = \"p\"");
    assert!(e.contains("needs `model"), "{e}");
    let e = err_of("[weavers.c]\nmodel = \"a/b\"");
    assert!(e.contains("needs `prompt`"), "{e}");
    let e = err_of("[weavers.d]\nprompt = \"p\"\nprompt_file = \"/p\"\nmodel = \"a/b\"");
    assert!(e.contains("not both"), "{e}");
    let e = err_of("[weavers.e]\nprompt_file = \"rel.md\"\nmodel = \"a/b\"");
    assert!(e.contains("absolute"), "{e}");
    let e = err_of("[weavers.f]\nprompt_file = \"/x.md\"\nmodel = \"a/b\"");
    assert!(e.contains("no files in this test"), "{e}");
    let e = err_of("[weavers.g]\nmemory = \"1G\"");
    assert!(e.contains("nothing to run"), "{e}");
    let e = err_of("[weavers.\"bad name!\"]\ncommand = [\"x\"]");
    assert!(e.contains("bad name!"), "{e}");
    let e = err_of("[weavers.h]\ncommand = [\"x\"]\nagent.max_iterations = 3");
    assert!(e.contains("[agent] settings need"), "{e}");
    let e = err_of("[weavers.i]\ncommand = [\"x\"]\negress.allow = [\"not a rule!\"]");
    assert!(e.contains("[weavers.i]"), "{e}");
    let typo = toml::from_str::<ApplyFile>("[weavers.j]\ncomand = [\"x\"]").unwrap_err().to_string();
    assert!(typo.contains("unknown field `comand`"), "{typo}");
}

#[test]
fn the_hash_follows_the_spec_and_the_defaults() {
    let d = decls("[weavers.a]\ncommand = [\"sleep\", \"1\"]");
    let one = declared_weavers(&d, &WeaverDefaults::default(), no_files).unwrap();
    let again = declared_weavers(&d, &WeaverDefaults::default(), no_files).unwrap();
    assert_eq!(one[0].hash, again[0].hash);
    let d2 = decls("[weavers.a]\ncommand = [\"sleep\", \"2\"]");
    assert_ne!(declared_weavers(&d2, &WeaverDefaults::default(), no_files).unwrap()[0].hash, one[0].hash);
    // A changed default the weaver does not override is a changed spec too.
    let defaults = WeaverDefaults { tasks: 100, ..WeaverDefaults::default() };
    assert_ne!(declared_weavers(&d, &defaults, no_files).unwrap()[0].hash, one[0].hash);
}

fn ex(name: &str, origin: Origin, hash: &str) -> Existing {
    Existing { name: name.into(), origin, hash: Some(hash.into()) }
}

#[test]
fn the_plan_touches_only_its_own_source() {
    let existing = vec![
        ex("same", Origin::Config, "h1"),
        ex("changed", Origin::Config, "old"),
        ex("gone", Origin::Config, "h"),
        ex("mine", Origin::Hand, "x"),
        ex("theirs", Origin::Apply("/srv/loom.toml".into()), "h"),
        ex("taken", Origin::Hand, "h"),
    ];
    let declared = [("same", "h1"), ("changed", "new"), ("fresh", "h"), ("taken", "h")];
    let p = plan(&Origin::Config, declared, &existing);
    assert_eq!(p.create, ["fresh"]);
    assert_eq!(p.update, ["changed"]);
    assert_eq!(p.remove, ["gone"]);
    assert_eq!(p.unchanged, ["same"]);
    assert_eq!(p.conflicts, [Conflict { name: "taken".into(), held_by: "hand".into() }]);
    assert!(!p.is_noop());
    // The other source's weavers are its own: an empty apply of another file removes nothing.
    let p = plan(&Origin::Apply("/other".into()), [], &existing);
    assert_eq!(p, Plan::default());
    assert!(p.is_noop());
}

#[test]
fn origins_round_trip_through_the_store() {
    for o in [Origin::Hand, Origin::Config, Origin::Apply("/a b/loom.yml".into())] {
        assert_eq!(Origin::from_stored(Some(&o.as_stored())), o);
    }
    assert_eq!(Origin::from_stored(None), Origin::Hand);
    assert_eq!(Origin::from_stored(Some("apply:")), Origin::Hand);
    assert_eq!(Origin::from_stored(Some("something else")), Origin::Hand);
    assert!(Origin::apply("").is_err());
    assert!(Origin::apply("a\nb").is_err());
    assert!(Origin::apply(&"x".repeat(MAX_SOURCE_LEN + 1)).is_err());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> impl Strategy<Value = Origin> {
        prop_oneof![Just(Origin::Hand), Just(Origin::Config), "[ab]".prop_map(Origin::Apply)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every declared name is in exactly one list; nothing of another origin is created,
        /// updated or removed; every own weaver not declared is removed; and applying the plan
        /// then planning again gives a no-op.
        #[test]
        fn plans_are_exact_and_converge(
            declared in proptest::collection::btree_map("[a-f]", "[xy]", 0..6),
            existing in proptest::collection::btree_map("[a-h]", (origin(), "[xy]"), 0..8),
            source in origin().prop_filter("a source is declared", |o| o.is_declared()),
        ) {
            let existing: Vec<Existing> = existing
                .into_iter()
                .map(|(name, (origin, hash))| Existing { name, origin, hash: Some(hash) })
                .collect();
            let p = plan(&source, declared.iter().map(|(k, v)| (k.as_str(), v.as_str())), &existing);
            for name in declared.keys() {
                let n = [&p.create, &p.update, &p.unchanged].iter().filter(|l| l.contains(name)).count()
                    + p.conflicts.iter().filter(|c| &c.name == name).count();
                prop_assert_eq!(n, 1, "{} in {:?}", name, p);
            }
            for e in &existing {
                let touched = p.update.contains(&e.name) || p.remove.contains(&e.name) || p.unchanged.contains(&e.name);
                if e.origin != source {
                    prop_assert!(!touched && !p.create.contains(&e.name));
                } else if !declared.contains_key(&e.name) {
                    prop_assert!(p.remove.contains(&e.name));
                }
            }
            // Apply it.
            let mut after: Vec<Existing> =
                existing.iter().filter(|e| !p.remove.contains(&e.name)).cloned().collect();
            for e in after.iter_mut().filter(|e| p.update.contains(&e.name)) {
                e.hash = declared.get(&e.name).cloned();
            }
            for name in &p.create {
                after.push(Existing { name: name.clone(), origin: source.clone(), hash: declared.get(name).cloned() });
            }
            let again = plan(&source, declared.iter().map(|(k, v)| (k.as_str(), v.as_str())), &after);
            prop_assert!(again.is_noop(), "{:?} after {:?}", again, p);
            prop_assert_eq!(again.conflicts, p.conflicts);
        }

        /// Any TOML text: a clear error or declared weavers within bounds, never a panic.
        #[test]
        fn any_apply_file_is_ok_or_a_clear_error(text in "(\\[weavers\\.[a-z]{1,3}\\]\n|[a-z_]{1,12} = (\"[ -~]{0,12}\"|[0-9]{1,4}|\\[\"[a-z ]{0,6}\"\\])\n){0,8}") {
            if let Ok(f) = toml::from_str::<ApplyFile>(&text) {
                match declared_weavers(&f.weavers, &WeaverDefaults::default(), |_| Ok("p".into())) {
                    Ok(ws) => for w in ws {
                        prop_assert_eq!(&w.spec.name, &w.name);
                        prop_assert!(!w.spec.command.is_empty() || w.spec.agent.is_some());
                    },
                    Err(e) => prop_assert!(e.to_string().starts_with("[weavers.")),
                }
            }
        }
    }
}
