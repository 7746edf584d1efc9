# services.loomd: the loom host daemon as a systemd service.
#
# loomd decrypts its SOPS file itself and keeps the plaintext only in memory, so this module
# hands it the *encrypted* file and the keys that open it (the same age key or SSH host key
# sops-nix uses). It never asks sops-nix to write the provider keys to /run/secrets.
{ config, lib, pkgs, options, ... }:

let
  inherit (lib)
    mkOption mkEnableOption mkIf types literalExpression optional
    filterAttrsRecursive attrNames concatStringsSep hasPrefix removePrefix;

  cfg = config.services.loomd;
  settingsFormat = pkgs.formats.toml { };

  # What loom-core's Config accepts (it is `deny_unknown_fields`): anything else makes loomd
  # refuse to start, so the module says so at evaluation time instead.
  knownKeys = {
    top = [ "socket" "state_dir" "backend" "access" "weaver" "secrets" "providers" "proxy" "audit" "network" "wireguard" "weavers" "tailscale" ];
    access = [ "admin_group" "operator_group" ];
    weaver = [ "image" "memory" "cpus" "tasks" "ttl" "network" "restart" "start_timeout" "nested" "image_roots" "disk" "log_size" "egress" "ssh" ];
    secrets = [ "file" "format" "age_key_file" "ssh_host_keys" "pgp_key_file" ];
  };
  unknown = known: attrs: lib.subtractLists known (attrNames attrs);

  # TOML has no null: an unset optional key is left out and loomd uses its own default.
  finalSettings = filterAttrsRecursive (_: v: v != null) cfg.settings;

  hasSopsNix = options ? sops && options.sops ? age;

  # /run/loomd/loomd.sock -> "loomd"; anything else outside /run gets no RuntimeDirectory.
  runtimeDir =
    let
      dir = builtins.dirOf cfg.settings.socket;
    in
    if hasPrefix "/run/" dir && builtins.match "/run/[^/]+" dir != null then removePrefix "/run/" dir else null;
  stateDir =
    let
      d = cfg.settings.state_dir;
    in
    if builtins.match "/var/lib/[^/]+" d != null then removePrefix "/var/lib/" d else null;

  sizeRe = "[0-9]+([KkMmGgTt][Bb]?)?";
  spanRe = "[0-9]+[smhd]";

  providerSecrets = lib.filter (p: p != null)
    (lib.mapAttrsToList (_: p: p.secret or null) (cfg.settings.providers or { }));
in
{
  imports = [ ./weaver.nix ./weavers.nix ];

  options.services.loomd = {
    enable = mkEnableOption "loomd, the loom host daemon that runs agent loops in isolated weavers";

    package = mkOption {
      type = types.package;
      description = "The loom package; it must hold bin/loomd and bin/loom-agent side by side.";
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run `loomd --check-config` on the generated file at build time, so a config loomd
        would refuse fails the build instead of the service.
      '';
    };

    settings = mkOption {
      description = ''
        loomd's TOML config (see README "Configuration"). Keys not declared here are passed
        through as they are; loomd refuses keys it does not know.
      '';
      default = { };
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          socket = mkOption {
            type = types.str;
            default = "/run/loomd/loomd.sock";
            description = "The operator socket (0660 root:operator_group).";
          };
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/loom";
            description = "SQLite store and the weavers' roots; loomd makes it 0700.";
          };
          backend = mkOption {
            type = types.nullOr (types.enum [ "systemd" "nspawn" "kubernetes" ]);
            default = "systemd";
            description = "Weaver backend; null lets loomd pick (systemd where it is PID 1).";
          };
          access = mkOption {
            default = { };
            description = "Who may use the socket, by group.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                admin_group = mkOption {
                  type = types.str;
                  default = "loom-admin";
                  description = "Members (and root) may do everything.";
                };
                operator_group = mkOption {
                  type = types.str;
                  default = "loom";
                  description = "Members see and change only the weavers they created; owns the socket.";
                };
              };
            };
          };
          weaver = mkOption {
            default = { };
            description = "Defaults for new weavers.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                image = mkOption {
                  type = types.str;
                  default = "host";
                  description = ''"host" or an absolute directory holding usr/ (see services.loomd.weaverImage).'';
                };
                memory = mkOption {
                  type = types.strMatching sizeRe;
                  default = "4G";
                  description = "Memory limit, e.g. 512M, 4G.";
                };
                cpus = mkOption {
                  type = types.either types.ints.positive types.float;
                  default = 2.0;
                  description = "CPU quota in CPUs.";
                };
                tasks = mkOption {
                  type = types.ints.between 16 4194304;
                  default = 4096;
                  description = "Maximum number of tasks.";
                };
                ttl = mkOption {
                  type = types.nullOr (types.strMatching spanRe);
                  default = "4h";
                  description = "Wall-clock limit; null leaves loomd's default.";
                };
                network = mkOption {
                  type = types.enum [ "private" "none" "host" ];
                  default = "private";
                  description = "private: own netns with loopback and the LLM proxy; none: no proxy either; host: the host's.";
                };
                restart = mkOption {
                  type = types.enum [ "never" "on-failure" "always" ];
                  default = "never";
                  description = "Restart policy for new weavers.";
                };
                start_timeout = mkOption {
                  type = types.strMatching spanRe;
                  default = "30s";
                  description = "How long create waits for the first process.";
                };
              };
            };
          };
        };
      };
      example = literalExpression ''
        {
          weaver.memory = "8G";
          providers.anthropic = { base_url = "https://api.anthropic.com"; secret = "anthropic_api_key"; };
          proxy.limits = { max_usd = 50; requests_per_minute = 600; };
          audit.required = true;
        }
      '';
    };

    secrets = {
      sopsFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "../../secrets/example.yaml";
        description = ''
          The encrypted SOPS file (copied to the Nix store encrypted, as sops-nix does with
          its sopsFile). loomd decrypts it in memory; it is never decrypted to disk.
        '';
      };
      file = mkOption {
        type = types.nullOr types.str;
        default = if cfg.secrets.sopsFile == null then null else "${cfg.secrets.sopsFile}";
        defaultText = literalExpression ''"''${services.loomd.secrets.sopsFile}" or null'';
        description = ''
          Path loomd reads the encrypted SOPS file from at run time (secrets.file). Must be
          the encrypted file: a file sops-nix already decrypted has no MAC and loomd refuses it.
        '';
      };
      ageKeyFile = mkOption {
        type = types.nullOr types.str;
        default = if hasSopsNix && config.sops.age.keyFile != null then toString config.sops.age.keyFile else null;
        defaultText = literalExpression "config.sops.age.keyFile if sops-nix is imported, else null";
        description = "age identity file (SOPS_AGE_KEY_FILE format).";
      };
      sshHostKeys = mkOption {
        type = types.listOf types.str;
        default =
          if hasSopsNix then map toString config.sops.age.sshKeyPaths else [ "/etc/ssh/ssh_host_ed25519_key" ];
        defaultText = literalExpression ''config.sops.age.sshKeyPaths if sops-nix is imported, else [ "/etc/ssh/ssh_host_ed25519_key" ]'';
        description = "ed25519 SSH private keys used as age identities (ssh-to-age), like sops-nix.";
      };
      pgpKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Armored PGP secret key file.";
      };
    };

    tailscale = {
      advertiseWeaverSubnet = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Make this host a Tailscale subnet router for the weaver subnet
          (`settings.network.subnet`): enables `services.tailscale` with
          `--advertise-routes=SUBNET`, so tailnet machines reach weavers by address once the
          route is approved in the admin console. Weavers' egress policy still applies to what
          they connect to; this only lets operators in.
        '';
      };
      authKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/secrets/tailscale-authkey";
        description = ''
          A Tailscale auth key file for `tailscale up` (e.g. a sops-nix secret, readable by
          root only); null to log the host in by hand.
        '';
      };
      weavers = {
        enable = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Let `loom weaver create --tailscale` join a weaver to the tailnet as its own node,
            named after the weaver, with Tailscale SSH (`tailscale ssh root@WEAVER-NAME`):
            loomd starts `tailscaled --tun=userspace-networking --state=mem:` inside the weaver
            and runs `tailscale up --ssh` with an auth key it reads from the SOPS file and
            removes from the weaver before the weaver's own first process runs. The node is
            ephemeral: it logs out when the weaver stops.
          '';
        };
        authKeySecret = mkOption {
          type = types.str;
          default = "tailscale/auth_key";
          example = "tailscale/weaver_key";
          description = ''
            The path in `services.loomd.secrets.file` of an **ephemeral, tagged** auth key
            (reusable, so every weaver can use it; tagged with `tags`).
          '';
        };
        tags = mkOption {
          type = types.listOf types.str;
          default = [ "tag:loom-weaver" ];
          description = "ACL tags the weavers' nodes advertise; the auth key must be allowed to use them.";
        };
        loginServer = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "https://headscale.example.com";
          description = "A coordination server other than Tailscale's (Headscale).";
        };
        package = mkOption {
          type = types.package;
          default = pkgs.tailscale;
          defaultText = lib.literalExpression "pkgs.tailscale";
          description = "The tailscale package whose binaries run inside weavers (from /nix/store, which weavers see).";
        };
      };
    };

    mountBpffs = mkOption {
      type = types.bool;
      default = true;
      description = "Mount bpffs at /sys/fs/bpf when nothing has (systemd usually does) for the audit programs.";
    };

    finalSettings = mkOption {
      type = types.attrs;
      internal = true;
      readOnly = true;
      description = "The settings as rendered to TOML (nulls removed).";
    };
    configFile = mkOption {
      type = types.path;
      internal = true;
      readOnly = true;
      description = "The generated loomd.toml.";
    };
  };

  config = mkIf cfg.enable {
    services.tailscale = mkIf cfg.tailscale.advertiseWeaverSubnet ({
      enable = true;
      useRoutingFeatures = lib.mkDefault "server";
      extraUpFlags = [ "--advertise-routes=${cfg.settings.network.subnet or "10.87.0.0/16"}" ];
    } // lib.optionalAttrs (cfg.tailscale.authKeyFile != null) { authKeyFile = cfg.tailscale.authKeyFile; });

    services.loomd.settings.tailscale = mkIf cfg.tailscale.weavers.enable (lib.mapAttrs (_: lib.mkDefault) ({
      enable = true;
      auth_key_secret = cfg.tailscale.weavers.authKeySecret;
      tags = cfg.tailscale.weavers.tags;
      tailscaled = "${cfg.tailscale.weavers.package}/bin/tailscaled";
      tailscale = "${cfg.tailscale.weavers.package}/bin/tailscale";
    } // lib.optionalAttrs (cfg.tailscale.weavers.loginServer != null) { login_server = cfg.tailscale.weavers.loginServer; }));

    # TOML has no null, and the TOML type refuses one, so only keys that are set go in.
    services.loomd.settings.secrets = lib.mapAttrs (_: lib.mkDefault) (lib.filterAttrs (_: v: v != null) {
      file = cfg.secrets.file;
      age_key_file = cfg.secrets.ageKeyFile;
      ssh_host_keys = cfg.secrets.sshHostKeys;
      pgp_key_file = cfg.secrets.pgpKeyFile;
    });

    services.loomd.finalSettings = finalSettings;
    services.loomd.configFile =
      let
        raw = settingsFormat.generate "loomd.toml" finalSettings;
      in
      if cfg.checkConfig then
        pkgs.runCommand "loomd.toml" { } ''
          ${cfg.package}/bin/loomd --check-config ${raw}
          cp ${raw} $out
        ''
      else
        raw;

    assertions =
      let
        s = cfg.settings;
        unknownTop = unknown knownKeys.top s;
        unknownAccess = unknown knownKeys.access s.access;
        unknownWeaver = unknown knownKeys.weaver s.weaver;
        unknownSecrets = unknown knownKeys.secrets (s.secrets or { });
        hasKey = cfg.secrets.ageKeyFile != null || cfg.secrets.sshHostKeys != [ ] || cfg.secrets.pgpKeyFile != null;
      in
      [
        {
          assertion = unknownTop == [ ] && unknownAccess == [ ] && unknownWeaver == [ ] && unknownSecrets == [ ];
          message = "services.loomd.settings has keys loomd does not know and would refuse to start with: "
            + concatStringsSep ", " (unknownTop ++ map (k: "access.${k}") unknownAccess
              ++ map (k: "weaver.${k}") unknownWeaver ++ map (k: "secrets.${k}") unknownSecrets)
            + ". Known top-level keys: ${concatStringsSep ", " knownKeys.top}.";
        }
        {
          assertion = hasPrefix "/" s.socket && hasPrefix "/" s.state_dir;
          message = "services.loomd.settings.socket (${s.socket}) and state_dir (${s.state_dir}) must be absolute paths.";
        }
        {
          assertion = s.backend != "kubernetes";
          message = ''services.loomd.settings.backend = "kubernetes" is not available in this loomd build; use "systemd" (or null to let loomd pick).'';
        }
        {
          assertion = s.access.admin_group != s.access.operator_group;
          message = "services.loomd.settings.access.admin_group and operator_group are both \"${s.access.admin_group}\": every operator would be an admin. Use two groups.";
        }
        {
          assertion = s.weaver.image == "host" || (hasPrefix "/" s.weaver.image && !(lib.elem ".." (lib.splitString "/" s.weaver.image)));
          message = "services.loomd.settings.weaver.image must be \"host\" or an absolute path without \"..\", not \"${s.weaver.image}\".";
        }
        {
          assertion = (s.weaver.cpus or 1) > 0;
          message = "services.loomd.settings.weaver.cpus must be above 0.";
        }
        {
          assertion = cfg.secrets.file == null || hasKey;
          message = "services.loomd.secrets.file is set but no key can open it: set secrets.ageKeyFile, secrets.sshHostKeys or secrets.pgpKeyFile.";
        }
        {
          assertion = cfg.secrets.file == null || !(hasSopsNix
            && lib.any (sec: sec.path or "" == cfg.secrets.file) (lib.attrValues (config.sops.secrets or { })));
          message = "services.loomd.secrets.file (${toString cfg.secrets.file}) is a file sops-nix decrypts: loomd needs the encrypted file (it checks the SOPS MAC). Set services.loomd.secrets.sopsFile to the encrypted file instead.";
        }
      ];

    # loomd runs without keys (the proxy has none to inject and `loom status` says why), so this is a
    # warning, not an assertion.
    warnings = optional (providerSecrets != [ ] && (cfg.settings.secrets.file or null) == null)
      "services.loomd.settings.providers name secrets (${concatStringsSep ", " providerSecrets}) but no SOPS file is set, so the LLM proxy will have no provider keys: set services.loomd.secrets.sopsFile (see secrets/README.md).";

    users.groups.${cfg.settings.access.operator_group} = { };
    users.groups.${cfg.settings.access.admin_group} = { };

    environment.systemPackages = [ cfg.package ];
    environment.etc."loom/loomd.toml".source = cfg.configFile;

    # The systemd backend puts every weaver unit here; a slice of its own lets the admin cap
    # all weavers together (systemd.slices.loom.sliceConfig.MemoryMax = "80%").
    systemd.slices.loom.description = "loom weavers";

    systemd.mounts = optional cfg.mountBpffs {
      description = "BPF file system (for loomd's audit programs)";
      what = "bpffs";
      where = "/sys/fs/bpf";
      type = "bpf";
      options = "mode=0700";
      unitConfig.ConditionPathIsMountPoint = "!/sys/fs/bpf";
      unitConfig.DefaultDependencies = false;
    };

    systemd.services.loomd = {
      description = "loom host daemon";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" "systemd-machined.service" ] ++ optional cfg.mountBpffs "sys-fs-bpf.mount";
      after = [ "network-online.target" "systemd-machined.service" ] ++ optional cfg.mountBpffs "sys-fs-bpf.mount";
      # systemd-nspawn and machinectl (systemd), git for --repo, nsenter (util-linux),
      # cp (coreutils) and bpftool for `loom status`.
      # iproute2 and nftables make the weavers' namespaces, veths, bridge and NAT; wireguard-go
      # is the operator tunnel's user-space backend where the kernel has no module.
      path = [ config.systemd.package pkgs.git pkgs.util-linux pkgs.coreutils pkgs.bpftools pkgs.iproute2 pkgs.nftables ]
        ++ optional ((cfg.settings.wireguard.enable or false) == true) pkgs.wireguard-go;
      # A changed config (declared weavers among it) is applied by SIGHUP: the unit refers to
      # /etc/loom/loomd.toml, not the store path, so a new config alone leaves the unit as it
      # is and `nixos-rebuild switch` reloads instead of restarting. A new package changes
      # ExecStart and restarts loomd, which weavers survive (KillMode=process, re-adoption).
      # Socket, state_dir and backend changes need `systemctl restart loomd`.
      reloadTriggers = [ cfg.configFile ];
      restartIfChanged = true;
      environment.LOOMD_LOG = lib.mkDefault "info";
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/loomd --config /etc/loom/loomd.toml";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        # SIGTERM goes to loomd alone: the weavers' shims (nspawn backend) stay in this
        # cgroup and must outlive a restart; the next loomd re-adopts them.
        KillMode = "process";
        KillSignal = "SIGTERM";
        Delegate = "yes";
        Restart = "on-failure";
        RestartSec = "2s";
        TimeoutStopSec = "15s";
        LimitMEMLOCK = "infinity";
        LimitNOFILE = 1048576;
        UMask = "0077";
        StateDirectoryMode = "0700";
        RuntimeDirectoryMode = "0755";
        # Keep /run/loomd across restarts: weavers outlive loomd and nothing stale is kept there
        # (loomd removes a dead socket itself).
        RuntimeDirectoryPreserve = "yes";

        # Hardening. What applies: filters that do not need a mount namespace and that the
        # weavers (descendants of loomd under the nspawn backend, which inherit them) can live
        # with.
        RestrictRealtime = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        # Unix (socket, D-Bus, journald), IP (proxy, DNS, git), netlink (ip, nft, WireGuard).
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
        # Relaxed, each on purpose:
        # - No mount namespace of its own (ProtectSystem, ProtectHome, PrivateTmp, PrivateDevices,
        #   ProtectKernelTunables/Modules/Logs, ProtectControlGroups, ProtectProc, ReadOnlyPaths):
        #   loomd bind-mounts each weaver's network namespace at /run/netns/loom-ID, which PID 1
        #   must see (the systemd backend's NetworkNamespacePath=), and a service's mount
        #   namespace does not propagate mounts back to the host. It also writes
        #   /proc/sys/net (forwarding) and the cgroup tree it was delegated.
        # - CapabilityBoundingSet/AmbientCapabilities stay full and User= stays root:
        #   systemd-nspawn needs CAP_SYS_ADMIN and hands weavers a bounded set drawn from it;
        #   eBPF needs CAP_BPF/CAP_PERFMON; networks CAP_NET_ADMIN.
        # - RestrictNamespaces = false: weavers are namespaces.
        # - NoNewPrivileges, MemoryDenyWriteExecute, RestrictSUIDSGID = false: nspawn-backend
        #   weavers inherit them, which would break setuid tools and JITs inside.
        # - SystemCallFilter unset: loomd installs the weavers' own filter (crate::sandbox), and
        #   a filter here would also bind every weaver.
        # - DevicePolicy unset: Delegate=yes hands weavers' cgroups their own device rules.
        NoNewPrivileges = false;
        ProtectSystem = false;
        PrivateTmp = false;
      }
      // lib.optionalAttrs (stateDir != null) { StateDirectory = stateDir; }
      // lib.optionalAttrs (runtimeDir != null) { RuntimeDirectory = runtimeDir; };
    };
  };
}
