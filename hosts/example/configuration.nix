# An example loom host: `nixos-rebuild switch --flake .#example` (after replacing the
# hardware bits below with your machine's hardware-configuration.nix).
{ config, lib, pkgs, ... }:

{
  networking.hostName = "loom-example";
  system.stateVersion = "25.11";

  # Replace with `imports = [ ./hardware-configuration.nix ];` from nixos-generate-config.
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  fileSystems."/boot" = { device = "/dev/disk/by-label/boot"; fsType = "vfat"; };

  # Operators reach the host (and later the weavers) over SSH on the tailnet; the host key
  # is also what opens the SOPS file (see secrets/README.md).
  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };
  services.tailscale.enable = true;
  networking.firewall.trustedInterfaces = [ "tailscale0" ];

  services.loomd = {
    enable = true;
    # Encrypted to this host's SSH key (ssh-to-age) and the admins' age keys by
    # secrets/.sops.yaml. loomd decrypts it in memory; sops-nix's module only supplies the
    # key paths (sops.age.sshKeyPaths), it does not decrypt this file.
    # Create it with `sops secrets/example.yaml` and `git add` it (a flake sees only tracked
    # files); until then loomd runs and `loom secrets check` says the keys are missing.
    secrets.sopsFile =
      if builtins.pathExists ../../secrets/example.yaml then ../../secrets/example.yaml else null;
    settings = {
      weaver = {
        memory = "8G";
        cpus = 4.0;
        ttl = "8h";
      };
      providers.anthropic = {
        base_url = "https://api.anthropic.com";
        secret = "anthropic_api_key";
      };
      providers.openai = {
        base_url = "https://api.openai.com";
        secret = "openai_api_key";
      };
      proxy.limits = {
        max_usd = 50;
        requests_per_minute = 600;
        max_concurrent = 32;
      };
      audit.required = true;
    };
  };

  # Caps all weavers together, whatever each one asked for.
  systemd.slices.loom.sliceConfig = {
    MemoryMax = "80%";
    CPUQuota = "90%";
  };

  users.users.alice = {
    isNormalUser = true;
    extraGroups = [ "loom" ]; # operator: her own weavers only
    openssh.authorizedKeys.keys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderReplaceWithARealKey0000000000 alice@example" ];
  };
  users.users.root.openssh.authorizedKeys.keys = [ ];
  users.users.bob = {
    isNormalUser = true;
    extraGroups = [ "loom" "loom-admin" ]; # admin: needs the operator group too to reach the socket
    openssh.authorizedKeys.keys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderReplaceWithARealKey0000000001 bob@example" ];
  };
}
