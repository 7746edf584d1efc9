#!/usr/bin/env bash
# Developer check of modules/ without nixpkgs: evaluates services.loomd (and the example host)
# with nixpkgs' lib.evalModules against small stubs of the NixOS options the modules touch,
# asserts on the generated unit, groups and settings, checks that bad combinations fail with
# their message, then renders the settings to TOML and, when a loomd binary is at hand, has
# `loomd --check-config` accept them.
#
#   NIXPKGS_LIB=/path/to/nixpkgs/lib nix/check.sh      # LOOMD=/path/to/loomd to pick a binary
#
# .ci/run runs it when NIXPKGS_LIB is set (no registry it reaches carries nixpkgs' lib pinned);
# it skips (exit 0) with a message when nix-instantiate or the lib is missing.
# A full NixOS build (`nix build .#nixosConfigurations.example.config.system.build.toplevel`)
# needs nixpkgs itself and is not what this checks.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "nix/check.sh: SKIPPED: nix-instantiate is not installed (apt-get install nix-bin)" >&2
  exit 0
fi
lib="${NIXPKGS_LIB:-}"
if [ -n "$lib" ] && [ -f "$lib/lib/default.nix" ]; then lib="$lib/lib"; fi
if [ -z "$lib" ] || [ ! -f "$lib/default.nix" ] || [ ! -f "$lib/modules.nix" ]; then
  echo "nix/check.sh: SKIPPED: set NIXPKGS_LIB to nixpkgs' lib directory (the one holding modules.nix); got '${NIXPKGS_LIB:-}'" >&2
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat >"$work/check.nix" <<'NIX'
{ libPath, root }:
let
  lib = import libPath;
  inherit (lib) mkOption types;

  drv = name: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };

  # The TOML value type as pkgs.formats.toml has it: no null anywhere.
  tomlValue = types.oneOf [ types.bool types.int types.float types.str types.path
    (types.attrsOf tomlValue) (types.listOf tomlValue) ] // { description = "TOML value"; };
  noNulls = v:
    if v == null then throw "a null reached the TOML generator"
    else if builtins.isAttrs v then lib.all noNulls (builtins.attrValues v)
    else if builtins.isList v then lib.all noNulls v
    else true;

  pkgs = lib.genAttrs [ "git" "util-linux" "coreutils" "bpftools" "bashInteractive" "findutils"
    "gnugrep" "gnused" "gawk" "diffutils" "gnupatch" "gnutar" "gzip" "xz" "openssh" "curl"
    "less" "procps" "which" "file" "jq" "ripgrep" "gnumake" "iproute2" "nftables" "wireguard-go" "tailscale" ] drv // {
    formats.toml = _: {
      type = tomlValue;
      generate = name: value: assert noNulls value; drv name;
    };
    runCommand = name: _env: _script: drv name;
    buildEnv = args: drv args.name;
  };

  # The NixOS options the modules and the example host use, with nixpkgs' own types.
  nixosStubs = import (root + "/nix/nixos-stubs.nix");
  sopsNixStub = {
    options.sops = {
      age.keyFile = mkOption { type = types.nullOr types.str; default = null; };
      age.sshKeyPaths = mkOption { type = types.listOf types.str; default = [ "/etc/ssh/ssh_host_ed25519_key" ]; };
      secrets = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
  };

  eval = modules: lib.evalModules {
    modules = [ nixosStubs (root + "/modules/loomd.nix")
      { services.loomd.package = drv "loom"; systemd.package = drv "systemd"; } ] ++ modules;
    specialArgs = { inherit pkgs; };
  };
  # What NixOS does with assertions and warnings, as values we can test.
  failed = c: map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
  ok = c: let f = failed c; in if f == [ ] then c else throw "unexpected failed assertions: ${builtins.toJSON f}";

  check = name: cond: if cond then name else throw "check failed: ${name}";
  failsWith = name: modules: needle:
    let f = failed (eval modules).config; in
    if lib.any (m: lib.hasInfix needle m) f then name
    else throw "check failed: ${name}: expected an assertion containing '${needle}', got ${builtins.toJSON f}";
  throws = name: modules:
    let r = builtins.tryEval (builtins.deepSeq (eval modules).config.services.loomd.finalSettings true); in
    if r.success then throw "check failed: ${name}: evaluated, expected a type error" else name;

  base = ok (eval [ { services.loomd.enable = true; } ]).config;
  unit = base.systemd.services.loomd;
  sc = unit.serviceConfig;
  s = base.services.loomd.finalSettings;

  example = ok (eval [ sopsNixStub (root + "/hosts/example/configuration.nix") ]).config;
  ex = example.services.loomd.finalSettings;

  withSops = ok (eval [ sopsNixStub {
    services.loomd.enable = true;
    sops.age.keyFile = "/var/lib/sops-nix/key.txt";
    sops.age.sshKeyPaths = [ "/etc/ssh/custom_ed25519" ];
    services.loomd.secrets.file = "/etc/loom/secrets.yaml";
  } ]).config;

  moved = ok (eval [ {
    services.loomd.enable = true;
    services.loomd.settings = { socket = "/run/looms/api.sock"; state_dir = "/srv/loom"; };
    services.loomd.weaverImage.enable = false;
    services.loomd.checkConfig = false;
  } ]).config;

  nulls = ok (eval [ {
    services.loomd.enable = true;
    services.loomd.settings = { backend = null; weaver.ttl = null; };
  } ]).config;

  disabled = (eval [ ]).config;
  tailnet = ok (eval [ {
    services.loomd.enable = true;
    services.loomd.tailscale = { advertiseWeaverSubnet = true; authKeyFile = "/run/secrets/ts"; };
    services.loomd.settings.network.subnet = "10.90.0.0/16";
    services.loomd.settings.wireguard = { enable = true; endpoint = "host.example:51820"; };
    services.loomd.tailscale.weavers = { enable = true; authKeySecret = "ts/key"; loginServer = "https://hs.example"; };
  } ]).config;

  declared = ok (eval [ {
    services.loomd.enable = true;
    services.loomd.weavers = {
      fix-tests = {
        repo = "https://example.com/app.git";
        promptFile = "/etc/loom/fix-tests.md";
        model = "anthropic/claude-sonnet-4-5";
        restart = "on-failure";
        memory = "2G";
        egress.allow = [ "github.com:443" ];
        agent = { maxIterations = 20; wallClock = "2h"; };
      };
      bench = { command = [ "make" "bench" ]; network = "none"; env.MODE = "fast"; ttl = "none"; };
      retired = { enable = false; command = [ "true" ]; };
    };
  } ]).config;
  dw = declared.services.loomd.finalSettings.weavers;
  dsc = declared.systemd.services.loomd.serviceConfig;

  results = [
    (check "declared: rendered as [weavers.NAME] with loomd's keys"
      (dw.fix-tests == {
        repo = "https://example.com/app.git";
        prompt_file = "/etc/loom/fix-tests.md";
        model = "anthropic/claude-sonnet-4-5";
        restart = "on-failure";
        memory = "2G";
        egress.allow = [ "github.com:443" ];
        agent = { max_iterations = 20; wall_clock = "2h"; };
      }))
    (check "declared: a command weaver, nulls and empties left out"
      (dw.bench == { command = [ "make" "bench" ]; network = "none"; env.MODE = "fast"; ttl = "none"; }))
    (check "declared: enable = false is kept as enable = false (loomd removes it)"
      (dw.retired == { enable = false; command = [ "true" ]; }))
    (check "no declared weavers: an empty table" (s.weavers == { }))
    (check "hardening: filters that need no mount namespace"
      (dsc.RestrictRealtime && dsc.LockPersonality && dsc.SystemCallArchitectures == "native"
        && dsc.RestrictAddressFamilies == [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ]))
    (check "hardening: no private mount namespace (netns mounts must reach PID 1)"
      (dsc.ProtectSystem == false && dsc.PrivateTmp == false && !(dsc ? ProtectHome) && !(dsc ? PrivateDevices)))
    (check "a changed config reloads, a changed package restarts"
      (unit.restartIfChanged && unit.reloadTriggers == [ base.services.loomd.configFile ]
        && !(lib.hasInfix "loomd.toml-" sc.ExecStart)))
    (failsWith "a declared weaver with a bad name is refused"
      [ { services.loomd.enable = true; services.loomd.weavers."Bad_Name".command = [ "x" ]; } ] "a weaver name is 1 to 63")
    (failsWith "a declared weaver with prompt and promptFile is refused"
      [ { services.loomd.enable = true; services.loomd.weavers.a = { prompt = "p"; promptFile = "/p"; model = "a/b"; }; } ]
      "set prompt or promptFile, not both")
    (failsWith "a declared prompt without a model is refused"
      [ { services.loomd.enable = true; services.loomd.weavers.a.prompt = "p"; } ] "needs both a prompt")
    (failsWith "a declared weaver with nothing to run is refused"
      [ { services.loomd.enable = true; services.loomd.weavers.a.memory = "1G"; } ] "exactly one of command or the agent loop")
    (throws "a declared weaver's memory = lots is a type error"
      [ { services.loomd.enable = true; services.loomd.weavers.a = { command = [ "x" ]; memory = "lots"; }; } ])
    (let r = builtins.tryEval (builtins.deepSeq (eval [ { services.loomd.enable = true;
        systemd.services.loomd.serviceConfig.Type = "daemonish"; } ]).config.systemd.services.loomd.serviceConfig true); in
      check "a Type= systemd does not know is a type error, as in NixOS" (!r.success))

    (check "disabled: no unit" (!(disabled.systemd.services ? loomd)))
    (check "Type=notify" (sc.Type == "notify"))
    (check "path has ip and nft" (lib.all (n: lib.any (p: p.name == n) unit.path) [ "iproute2" "nftables" ]))
    (check "tailscale advertises the weaver subnet"
      (tailnet.services.tailscale.enable && tailnet.services.tailscale.extraUpFlags == [ "--advertise-routes=10.90.0.0/16" ]
        && tailnet.services.tailscale.authKeyFile == "/run/secrets/ts"))
    (check "wireguard-go on the path when the tunnel is on"
      (lib.any (p: p.name == "wireguard-go") tailnet.systemd.services.loomd.path))
    (check "no tailscale unless asked" (!(base.services.tailscale.enable or false)))
    (check "no [tailscale] unless weavers join" (!(base.services.loomd.finalSettings ? tailscale)))
    (check "weavers' tailscaled invocation: the package's binaries, the SOPS key, the tags"
      (let t = tailnet.services.loomd.finalSettings.tailscale; in
        t.enable && t.auth_key_secret == "ts/key" && t.tags == [ "tag:loom-weaver" ]
        && t.tailscaled == "/nix/store/00000000000000000000000000000000-tailscale/bin/tailscaled"
        && t.tailscale == "/nix/store/00000000000000000000000000000000-tailscale/bin/tailscale"
        && t.login_server == "https://hs.example"))
    (check "ExecStart runs loomd with --config /etc/loom/loomd.toml"
      (lib.hasPrefix "/nix/store/00000000000000000000000000000000-loom/bin/loomd " sc.ExecStart
        && lib.hasInfix "--config /etc/loom/loomd.toml" sc.ExecStart))
    (check "ExecReload sends SIGHUP to the main pid" (lib.hasSuffix "/bin/kill -HUP $MAINPID" sc.ExecReload))
    (check "KillMode=process (weavers outlive loomd)" (sc.KillMode == "process"))
    (check "Delegate=yes" (sc.Delegate == "yes"))
    (check "RuntimeDirectory=loomd" (sc.RuntimeDirectory == "loomd"))
    (check "StateDirectory=loom, mode 0700" (sc.StateDirectory == "loom" && sc.StateDirectoryMode == "0700"))
    (check "after and wants network-online.target"
      (lib.elem "network-online.target" unit.after && lib.elem "network-online.target" unit.wants))
    (check "wantedBy multi-user.target" (unit.wantedBy == [ "multi-user.target" ]))
    (check "path has systemd, git, util-linux"
      (lib.all (n: lib.any (p: p.name == n) unit.path) [ "systemd" "git" "util-linux" ]))
    (check "reload on config change" (unit.reloadTriggers == [ base.services.loomd.configFile ]))
    (check "config is checked by loomd --check-config at build time"
      (base.services.loomd.configFile.name == "loomd.toml"))
    (check "/etc/loom/loomd.toml is the config file"
      (base.environment.etc."loom/loomd.toml".source == base.services.loomd.configFile))
    (check "groups loom and loom-admin" (base.users.groups ? loom && base.users.groups ? loom-admin))
    (check "loom.slice" (base.systemd.slices ? loom))
    (check "bpffs mount, skipped when already mounted"
      (lib.any (m: m.where == "/sys/fs/bpf" && m.type == "bpf"
        && m.unitConfig.ConditionPathIsMountPoint == "!/sys/fs/bpf") base.systemd.mounts))
    (check "settings: socket" (s.socket == "/run/loomd/loomd.sock"))
    (check "settings: state_dir and backend" (s.state_dir == "/var/lib/loom" && s.backend == "systemd"))
    (check "settings: access groups" (s.access == { admin_group = "loom-admin"; operator_group = "loom"; }))
    (check "settings: weaver image is the Nix-built image"
      (s.weaver.image == "/nix/store/00000000000000000000000000000000-loom-weaver-image"))
    (check "settings: weaver defaults" (s.weaver.memory == "4G" && s.weaver.tasks == 4096 && s.weaver.network == "private"))
    (check "settings: ssh host key default, no file, nulls dropped"
      (s.secrets == { ssh_host_keys = [ "/etc/ssh/ssh_host_ed25519_key" ]; }))
    (check "no warnings by default" (base.warnings == [ ]))

    (check "example: providers and limits" (ex.providers.anthropic.secret == "anthropic_api_key"
      && ex.proxy.limits.max_usd == 50 && ex.audit.required))
    (check "example: weaver overrides" (ex.weaver.memory == "8G" && ex.weaver.cpus == 4.0 && ex.weaver.ttl == "8h"))
    (check "example: warns that providers have no SOPS file yet"
      (builtins.pathExists (root + "/secrets/example.yaml")
        || lib.any (w: lib.hasInfix "no SOPS file is set" w) example.warnings))
    (check "example: alice is an operator" (lib.elem "loom" example.users.users.alice.extraGroups))

    (check "sops-nix: key paths come from sops.age"
      (withSops.services.loomd.finalSettings.secrets == {
        file = "/etc/loom/secrets.yaml";
        age_key_file = "/var/lib/sops-nix/key.txt";
        ssh_host_keys = [ "/etc/ssh/custom_ed25519" ];
      }))
    (check "socket elsewhere: RuntimeDirectory follows it"
      (moved.systemd.services.loomd.serviceConfig.RuntimeDirectory == "looms"))
    (check "state_dir outside /var/lib: no StateDirectory"
      (!(moved.systemd.services.loomd.serviceConfig ? StateDirectory)))
    (check "weaverImage off: image host" (moved.services.loomd.finalSettings.weaver.image == "host"))
    (check "checkConfig off: the raw generated file"
      (moved.services.loomd.configFile.outPath == "/nix/store/00000000000000000000000000000000-loomd.toml"))

    (check "null backend and ttl are left out, loomd picks"
      (let n = nulls.services.loomd.finalSettings; in !(n ? backend) && !(n.weaver ? ttl)
        && nulls.services.loomd.configFile.name == "loomd.toml"))

    (failsWith "kubernetes backend is refused"
      [ { services.loomd.enable = true; services.loomd.settings.backend = "kubernetes"; } ] "is not available in this loomd build")
    (failsWith "one group for admins and operators is refused"
      [ { services.loomd.enable = true; services.loomd.settings.access.admin_group = "loom"; } ] "every operator would be an admin")
    (failsWith "unknown top-level key is refused"
      [ { services.loomd.enable = true; services.loomd.settings.sockett = "/run/x"; } ] "keys loomd does not know and would refuse to start with: sockett")
    (failsWith "unknown weaver key is refused"
      [ { services.loomd.enable = true; services.loomd.settings.weaver.memroy = "1G"; } ] "weaver.memroy")
    (failsWith "relative socket is refused"
      [ { services.loomd.enable = true; services.loomd.settings.socket = "loomd.sock"; } ] "must be absolute paths")
    (failsWith "image with .. is refused"
      [ { services.loomd.enable = true; services.loomd.settings.weaver.image = "/srv/../etc"; } ] "without \"..\"")
    (failsWith "a SOPS file nothing can open is refused"
      [ { services.loomd.enable = true; services.loomd.secrets = { file = "/etc/loom/s.yaml"; sshHostKeys = [ ]; }; } ]
      "no key can open it")
    (failsWith "a file sops-nix decrypts is refused"
      [ sopsNixStub { services.loomd.enable = true; services.loomd.secrets.file = "/run/secrets/loom.yaml";
          sops.secrets."loom.yaml".path = "/run/secrets/loom.yaml"; } ]
      "is a file sops-nix decrypts")
    (throws "network = bridge is a type error"
      [ { services.loomd.enable = true; services.loomd.settings.weaver.network = "bridge"; } ])
    (throws "memory = lots is a type error"
      [ { services.loomd.enable = true; services.loomd.settings.weaver.memory = "lots"; } ])
    (throws "ttl without a unit is a type error"
      [ { services.loomd.enable = true; services.loomd.settings.weaver.ttl = "30"; } ])
    (throws "tasks = 8 is a type error"
      [ { services.loomd.enable = true; services.loomd.settings.weaver.tasks = 8; } ])
  ];
in
{
  inherit results;
  settings = {
    default = s;
    example = ex;
    declared = declared.services.loomd.finalSettings;
    sops = withSops.services.loomd.finalSettings;
    tailnet = tailnet.services.loomd.finalSettings;
  };
}
NIX

echo "nix/check.sh: evaluating modules/ with lib from $lib ($(nix-instantiate --version))"
nix-instantiate --eval --strict --json \
  --arg libPath "$lib" --arg root "$root" "$work/check.nix" >"$work/out.json"

python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
out = json.load(open(os.path.join(work, "out.json")))
for r in out["results"]:
    print(f"ok   {r}")
print(f"{len(out['results'])} checks passed")

def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(scalar(x) for x in v) + "]"
    raise SystemExit(f"cannot render {v!r} as a TOML value")

def toml(d, prefix=()):
    lines = [f"{json.dumps(k) if not k.replace('_','').replace('-','').isalnum() else k} = {scalar(v)}"
             for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", "[" + ".".join(prefix + (k,)) + "]"] + toml(v, prefix + (k,))
    return lines

for name, settings in out["settings"].items():
    with open(os.path.join(work, f"{name}.toml"), "w") as f:
        f.write("\n".join(toml(settings)) + "\n")
PY

# flake.nix against a stub nixpkgs (real lib, fake rustPlatform and nixosSystem): the outputs
# exist, the package's source holds the workspace and the committed eBPF object but no target/,
# and nixosModules.loomd supplies the package. --read-write-mode because cleanSourceWith copies
# the filtered source (about 2 MB) into the store.
cat >"$work/flake.nix" <<'NIX'
{ libPath, root }:
let
  lib = import libPath;
  flake = import (root + "/flake.nix");
  stubPkgs = system: {
    stdenv.hostPlatform.system = system;
    rustPlatform.buildRustPackage = let
      mk = args: args // {
        type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-${args.pname}";
        overrideAttrs = f: mk (args // f args);
      };
    in mk;
    testers.runNixOSTest = args: args // { type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-vm-test"; };
    clippy = "clippy";
    nixpkgs-fmt = null;
    git = "git"; openssh = "openssh"; perl = "perl"; procps = "procps";
  };
  nixpkgs = {
    lib = lib // { nixosSystem = args: args; };
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] stubPkgs;
  };
  self = flake.outputs { inherit self nixpkgs; sops-nix.nixosModules.sops = { }; };
  pkg = self.packages.x86_64-linux.loom;
  top = builtins.attrNames (builtins.readDir pkg.src);
  check = name: cond: if cond then name else throw "check failed: ${name}";
in
[
  (check "flake: packages.loom, default" (self.packages.x86_64-linux.default == pkg && pkg.pname == "loom"))
  (check "flake: version from the workspace" (pkg.version == (lib.importTOML (root + "/Cargo.toml")).workspace.package.version))
  (check "flake: the unprivileged tests run in the package build, none skipped by a filter, Cargo.lock used"
    (pkg.doCheck == true && pkg.cargoTestFlags == [ "--workspace" ] && !(pkg ? checkFlags)
      && builtins.length pkg.nativeCheckInputs == 4
      && baseNameOf (toString pkg.cargoLock.lockFile) == "Cargo.lock"))
  (check "flake: source is the workspace only" (top == [ "Cargo.lock" "Cargo.toml" "README.md" "daemon" "ebpf" ]))
  (check "flake: source has the committed eBPF object" (builtins.pathExists "${pkg.src}/ebpf/audit.bpf.o"))
  (check "flake: source has no target/" (!(builtins.pathExists "${pkg.src}/target")))
  (check "flake: nixosModules.loomd sets the package"
    ((self.nixosModules.loomd { pkgs = stubPkgs "x86_64-linux"; inherit lib; }).services.loomd.package.content == pkg))
  (check "flake: nixosConfigurations.example uses the module and the host"
    (let m = self.nixosConfigurations.example.modules; in
      builtins.length m == 3 && builtins.isFunction (builtins.elemAt m 1)
      && builtins.elemAt m 2 == root + "/hosts/example/configuration.nix"))
  (check "flake: checks" (builtins.attrNames self.checks.x86_64-linux == [ "clippy" "example-system" "loom" "unit-tests" "vm" ]
    && builtins.attrNames self.checks.aarch64-linux == [ "clippy" "loom" "unit-tests" ]))
  (check "flake: clippy denies warnings on every target"
    (let c = self.checks.x86_64-linux.clippy; in c.pname == "loom-clippy" && !c.doCheck
      && lib.hasInfix "cargo clippy --offline --workspace --all-targets -- -D warnings" c.buildPhase))
  (check "flake: unit tests" (lib.hasInfix "cargo test --offline --workspace --lib" self.checks.x86_64-linux.unit-tests.buildPhase))
  (check "flake: the VM test boots the example host with a declared weaver and greps the audit journal"
    (let t = self.checks.x86_64-linux.vm; m = t.nodes.machine { lib = lib; }; in
      t.name == "loom" && lib.elem (root + "/hosts/example/configuration.nix") m.imports
      && m.services.loomd.weavers ? declared-hello
      && lib.hasInfix "wait_for_unit(\"loomd.service\")" t.testScript
      && lib.hasInfix "journalctl -t loom-audit" t.testScript
      && lib.hasInfix "loom weaver create" t.testScript))
]
NIX
nix-instantiate --read-write-mode --eval --strict --json \
  --arg libPath "$lib" --arg root "$root" "$work/flake.nix" | python3 -c '
import json, sys
r = json.load(sys.stdin)
for n in r: print(f"ok   {n}")
print(f"{len(r)} flake checks passed")'

loomd="${LOOMD:-}"
if [ -z "$loomd" ]; then
  for c in "$(command -v loomd || true)" "$root/target/debug/loomd" "$root/target/release/loomd"; do
    if [ -n "$c" ] && [ -x "$c" ]; then loomd="$c"; break; fi
  done
fi
if [ -z "$loomd" ] || [ ! -x "$loomd" ]; then
  echo "nix/check.sh: loomd --check-config SKIPPED: no loomd binary (set LOOMD=/path/to/loomd)" >&2
  exit 0
fi
for name in default example declared sops tailnet; do
  echo "--- $name settings as TOML ---"
  cat "$work/$name.toml"
  "$loomd" --check-config "$work/$name.toml"
done
echo "nix/check.sh: all checks passed"
