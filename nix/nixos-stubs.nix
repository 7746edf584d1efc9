# The NixOS options modules/ and hosts/example set or read, declared with the same types
# nixpkgs gives them (nixos/lib/systemd-unit-options.nix, nixos/modules/config/users-groups.nix,
# nixos/modules/system/etc/etc.nix, ...), re-written here in their shape so that
# nix/check.sh can evaluate the modules with nixpkgs' lib alone. A value NixOS would refuse
# (a null in serviceConfig, a unit name without its suffix, a bad Type=) is refused here too.
{ lib, ... }:
let
  inherit (lib) mkOption mkOptionType types;

  # nixpkgs' unitOption: repeatable options are lists (concatenated), others must agree.
  unitOption = mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let defs' = lib.filterOverrides defs; in
      if builtins.isList (builtins.head defs').value
      then lib.concatMap (def:
        if builtins.isList def.value then def.value
        else throw "The definitions for systemd unit options should be either all lists or all non-lists: ${lib.showOption loc}")
        defs'
      else lib.mergeEqualOption loc defs';
  };
  unitNameType = types.strMatching
    "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  # checkService: Type= and Restart= one of what systemd knows.
  oneOfIfSet = name: values: attrs: !(attrs ? ${name}) || lib.elem attrs.${name} values;
  checkService = attrs:
    oneOfIfSet "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ] attrs
    && oneOfIfSet "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "on-watchdog" "always" ] attrs;

  unitCommon = {
    description = mkOption { type = types.singleLineStr; default = ""; };
    documentation = mkOption { type = types.listOf types.str; default = [ ]; };
    wantedBy = mkOption { type = types.listOf unitNameType; default = [ ]; };
    requiredBy = mkOption { type = types.listOf unitNameType; default = [ ]; };
    wants = mkOption { type = types.listOf unitNameType; default = [ ]; };
    requires = mkOption { type = types.listOf unitNameType; default = [ ]; };
    after = mkOption { type = types.listOf unitNameType; default = [ ]; };
    before = mkOption { type = types.listOf unitNameType; default = [ ]; };
    unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
    restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    reloadTriggers = mkOption { type = types.listOf unitOption; default = [ ]; };
  };
  service = types.submodule {
    options = unitCommon // {
      environment = mkOption { type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ])); default = { }; };
      path = mkOption { type = types.listOf (types.oneOf [ types.package types.str ]); default = [ ]; };
      serviceConfig = mkOption { type = types.addCheck (types.attrsOf unitOption) checkService; default = { }; };
      restartIfChanged = mkOption { type = types.bool; default = true; };
      reloadIfChanged = mkOption { type = types.bool; default = false; };
      stopIfChanged = mkOption { type = types.bool; default = true; };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
    };
  };
  slice = types.submodule { options = unitCommon // { sliceConfig = mkOption { type = types.attrsOf unitOption; default = { }; }; }; };
  mount = types.submodule {
    options = unitCommon // {
      what = mkOption { type = types.str; };
      where = mkOption { type = types.str; };
      type = mkOption { type = types.str; default = ""; };
      options = mkOption { type = types.commas; default = ""; };
      mountConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
    };
  };
  user = types.submodule {
    options = {
      isNormalUser = mkOption { type = types.bool; default = false; };
      isSystemUser = mkOption { type = types.bool; default = false; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
      group = mkOption { type = types.str; default = ""; };
      openssh.authorizedKeys.keys = mkOption { type = types.listOf types.singleLineStr; default = [ ]; };
    };
  };
  group = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.passwdEntry types.str; default = name; };
      gid = mkOption { type = types.nullOr types.int; default = null; };
      members = mkOption { type = types.listOf (types.passwdEntry types.str); default = [ ]; };
    };
  });
  etc = types.submodule ({ name, ... }: {
    options = {
      enable = mkOption { type = types.bool; default = true; };
      target = mkOption { type = types.str; default = name; };
      text = mkOption { type = types.nullOr types.lines; default = null; };
      source = mkOption { type = types.path; };
      mode = mkOption { type = types.str; default = "symlink"; };
    };
  });
  # The host-level options the example host sets and the modules never read.
  hostOnly = mkOption { type = types.attrsOf types.anything; default = { }; };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    systemd = {
      package = mkOption { type = types.package; };
      services = mkOption { type = types.attrsOf service; default = { }; };
      slices = mkOption { type = types.attrsOf slice; default = { }; };
      mounts = mkOption { type = types.listOf mount; default = [ ]; };
    };
    users.groups = mkOption { type = types.attrsOf group; default = { }; };
    users.users = mkOption { type = types.attrsOf user; default = { }; };
    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
    environment.etc = mkOption { type = types.attrsOf etc; default = { }; };
    services.tailscale = {
      enable = mkOption { type = types.bool; default = false; };
      useRoutingFeatures = mkOption { type = types.enum [ "none" "client" "server" "both" ]; default = "none"; };
      extraUpFlags = mkOption { type = types.listOf types.str; default = [ ]; };
      authKeyFile = mkOption { type = types.nullOr types.path; default = null; };
    };
    services.openssh = {
      enable = mkOption { type = types.bool; default = false; };
      settings = mkOption { type = types.submodule { freeformType = types.attrsOf types.anything; }; default = { }; };
    };
    networking = {
      hostName = mkOption { type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$"; default = "nixos"; };
      firewall.trustedInterfaces = mkOption { type = types.listOf types.str; default = [ ]; };
    };
    boot = hostOnly;
    fileSystems = hostOnly;
    system.stateVersion = mkOption { type = types.str; };
  };
}
