# services.loomd.weavers.<name>: weavers the host declares. Rendered into loomd's config as
# [weavers.<name>]; loomd reconciles them at start-up and on SIGHUP (which `nixos-rebuild
# switch` sends when only the config changed, see reloadTriggers in loomd.nix): it creates
# what is missing, restarts what changed with its new spec, removes what is gone, and never
# touches a weaver made by hand (`loom weaver ps` shows DECLARED = config for these).
{ config, lib, ... }:

let
  inherit (lib) mkOption mkEnableOption types literalExpression filterAttrs mapAttrs mapAttrsToList;
  cfg = config.services.loomd;

  sizeRe = "[0-9]+([KkMmGgTt][Bb]?)?";
  spanRe = "[0-9]+[smhd]";
  # loom_core::weaver::validate_name: what loomd accepts as a weaver name.
  nameRe = "[a-z]([a-z0-9-]{0,61}[a-z0-9])?";

  weaverModule = { name, ... }: {
    options = {
      enable = mkEnableOption "this declared weaver (false removes it, keeping the definition)" // { default = true; };
      repo = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "https://github.com/example/app.git";
        description = "A git URL loomd clones into the weaver's /workspace (https, http, git or ssh).";
      };
      branch = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The branch of `repo` to check out.";
      };
      image = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''`"host"` or an image directory; null uses `settings.weaver.image` (the Nix-built weaver image).'';
      };
      prompt = mkOption {
        type = types.nullOr types.lines;
        default = null;
        example = "Make the test suite pass. Commit each fix.";
        description = "The agent loop's prompt, inline (with `model`). Mutually exclusive with `promptFile`.";
      };
      promptFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./prompts/fix-tests.md";
        description = ''
          The agent loop's prompt as a file loomd reads (as root) at each reconcile. A Nix path
          is copied to the store, so do not put secrets in it.
        '';
      };
      model = mkOption {
        type = types.nullOr (types.strMatching "[^/]+/.+");
        default = null;
        example = "anthropic/claude-sonnet-4-5";
        description = "`PROVIDER/MODEL`: with a prompt, the weaver runs loom's agent loop.";
      };
      command = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "make" "test" ];
        description = "What to run instead of the agent loop.";
      };
      memory = mkOption {
        type = types.nullOr (types.strMatching sizeRe);
        default = null;
        example = "8G";
        description = "Memory limit; null takes `settings.weaver.memory`.";
      };
      cpus = mkOption {
        type = types.nullOr (types.either types.ints.positive types.float);
        default = null;
        description = "CPU quota in CPUs; null takes `settings.weaver.cpus`.";
      };
      tasks = mkOption {
        type = types.nullOr (types.ints.between 16 4194304);
        default = null;
        description = "Maximum number of tasks; null takes `settings.weaver.tasks`.";
      };
      ttl = mkOption {
        type = types.nullOr (types.either (types.strMatching spanRe) (types.enum [ "none" ]));
        default = null;
        example = "8h";
        description = ''Wall-clock limit; `"none"` for none; null takes `settings.weaver.ttl`.'';
      };
      disk = mkOption {
        type = types.nullOr (types.strMatching sizeRe);
        default = null;
        description = "Disk cap of the weaver's root; null takes `settings.weaver.disk`.";
      };
      network = mkOption {
        type = types.nullOr (types.enum [ "private" "none" "host" ]);
        default = null;
        description = "The weaver's network; null takes `settings.weaver.network`.";
      };
      restart = mkOption {
        type = types.nullOr (types.enum [ "never" "on-failure" "always" ]);
        default = null;
        example = "on-failure";
        description = "Restart policy; null takes `settings.weaver.restart`.";
      };
      env = mkOption {
        type = types.attrsOf types.str;
        default = { };
        description = "Environment variables inside the weaver (not for secrets: they are in the Nix store).";
      };
      egress.allow = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "github.com:443" "10.0.0.0/8:5432" ];
        description = "Egress rules (`CIDR[:PORT]`, `DOMAIN[:PORT]`) on top of `settings.weaver.egress.allow`.";
      };
      agent = {
        maxIterations = mkOption {
          type = types.nullOr types.ints.positive;
          default = null;
          description = "Stop the agent loop after this many iterations.";
        };
        until = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "A shell command; the loop stops once it succeeds.";
        };
        check = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Runs after each iteration; its failing output goes into the next prompt.";
        };
        wallClock = mkOption {
          type = types.nullOr (types.strMatching spanRe);
          default = null;
          description = "The loop's wall-clock limit.";
        };
        completionMarker = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "The text by which the agent says it is done.";
        };
      };
    };
  };

  nonNull = filterAttrs (_: v: v != null && v != [ ] && v != { });
  render = _: w: nonNull {
    enable = if w.enable then null else false;
    inherit (w) repo branch image prompt model command memory cpus tasks ttl disk network restart env;
    prompt_file = if w.promptFile == null then null else toString w.promptFile;
    egress = nonNull { inherit (w.egress) allow; };
    agent = nonNull {
      max_iterations = w.agent.maxIterations;
      inherit (w.agent) until check;
      wall_clock = w.agent.wallClock;
      completion_marker = w.agent.completionMarker;
    };
  };
  enabled = filterAttrs (_: w: w.enable) cfg.weavers;
in
{
  options.services.loomd.weavers = mkOption {
    type = types.attrsOf (types.submodule weaverModule);
    default = { };
    example = literalExpression ''
      {
        fix-tests = {
          repo = "https://github.com/example/app.git";
          promptFile = ./prompts/fix-tests.md;
          model = "anthropic/claude-sonnet-4-5";
          restart = "on-failure";
          egress.allow = [ "github.com:443" ];
          agent.maxIterations = 50;
        };
        nightly = { command = [ "make" "bench" ]; memory = "2G"; };
      }
    '';
    description = ''
      Weavers this host runs, kept as declared by loomd (see README "Declarative weavers").
      Changing one restarts it with its new spec; removing one removes the weaver.
    '';
  };

  config = lib.mkIf cfg.enable {
    services.loomd.settings.weavers = mapAttrs render cfg.weavers;

    assertions = lib.concatLists (mapAttrsToList
      (name: w: [
        {
          assertion = builtins.match nameRe name != null;
          message = "services.loomd.weavers.\"${name}\": a weaver name is 1 to 63 lowercase letters, digits or '-', starting with a letter and not ending with '-'.";
        }
        {
          assertion = !(w.prompt != null && w.promptFile != null);
          message = "services.loomd.weavers.${name}: set prompt or promptFile, not both.";
        }
        {
          assertion = (w.prompt != null || w.promptFile != null) == (w.model != null);
          message = "services.loomd.weavers.${name}: the agent loop needs both a prompt (prompt or promptFile) and model = \"PROVIDER/MODEL\".";
        }
        {
          assertion = (w.model != null) != (w.command != [ ]);
          message = "services.loomd.weavers.${name}: give exactly one of command or the agent loop (prompt with model).";
        }
        {
          assertion = w.promptFile == null || lib.hasPrefix "/" (toString w.promptFile);
          message = "services.loomd.weavers.${name}.promptFile must be an absolute path (loomd reads it).";
        }
      ])
      enabled);
  };
}
