# The NixOS VM test of loom (`nix build .#checks.x86_64-linux.vm`): boots the example host
# in QEMU, waits for loomd.service, creates a weaver with `loom`, runs a weaver the host
# declares (services.loomd.weavers), and finds both weavers' audit events with
# `journalctl -t loom-audit`; then changes the declared weaver and switches, which must
# reload loomd (SIGHUP), not restart it, and restart the weaver with its new spec.
#
# It cannot run in loom's own CI or development VMs (no nixpkgs checkout, no network to fetch
# one, no KVM for nested QEMU); there `nix-instantiate --parse` checks its syntax
# (nix/parse-all.sh). It runs wherever `nix flake check` runs with KVM.
{ pkgs, self, sops-nix }:

pkgs.testers.runNixOSTest {
  name = "loom";

  nodes.machine = { lib, ... }: {
    imports = [
      sops-nix.nixosModules.sops
      self.nixosModules.loomd
      ../../hosts/example/configuration.nix
    ];
    # The test driver's VM brings its own disks and boot: the example host's hardware bits go.
    boot.loader.systemd-boot.enable = lib.mkForce false;
    boot.loader.efi.canTouchEfiVariables = lib.mkForce false;
    services.tailscale.enable = lib.mkForce false;
    virtualisation = {
      memorySize = 4096;
      cores = 2;
      diskSize = 4096;
    };
    # The test drives loom as root (an admin); no provider keys are needed for a command weaver.
    services.loomd.weavers.declared-hello = {
      command = [ "/bin/sh" "-c" "echo hello-from-a-declared-weaver; cat /etc/hostname; sleep 3600" ];
      network = "none";
    };
    specialisation.changed.configuration = {
      services.loomd.weavers.declared-hello.command =
        lib.mkForce [ "/bin/sh" "-c" "echo changed-spec; sleep 3600" ];
    };
  };

  testScript = ''
    import json

    machine.wait_for_unit("loomd.service")
    machine.wait_for_file("/run/loomd/loomd.sock")
    machine.succeed("loom status")

    def weaver(name):
        ws = json.loads(machine.succeed("loom --json weaver ps"))
        return next((w for w in ws if w["name"] == name), None)

    # The declared weaver is made at start-up and shown as declared.
    machine.wait_until_succeeds("loom weaver ps | grep declared-hello | grep running | grep config", timeout=120)
    machine.wait_until_succeeds("loom weaver logs declared-hello | grep hello-from-a-declared-weaver", timeout=60)

    # One by hand, next to it.
    machine.succeed("loom weaver create --name by-hand --network none -- /bin/sh -c 'ls /workspace; sleep 3600'")
    machine.wait_until_succeeds("loom weaver ps | grep by-hand | grep running")
    assert weaver("by-hand").get("origin") is None

    # Both weavers' execs reach the journal from the eBPF audit.
    for name in ["declared-hello", "by-hand"]:
        wid = weaver(name)["id"]
        machine.wait_until_succeeds(
            f"journalctl -t loom-audit --no-pager -o json | grep '\"LOOM_WEAVER\":\"{wid}\"'", timeout=60
        )

    # A changed declaration is a reload (same loomd pid), and the weaver restarts with it.
    pid = machine.succeed("systemctl show -P MainPID loomd").strip()
    first = weaver("declared-hello")["id"]
    machine.succeed("/run/current-system/specialisation/changed/bin/switch-to-configuration test")
    machine.wait_until_succeeds("loom weaver logs declared-hello | grep changed-spec", timeout=120)
    assert machine.succeed("systemctl show -P MainPID loomd").strip() == pid, "loomd was restarted, not reloaded"
    assert weaver("declared-hello")["id"] == first
    assert weaver("by-hand")["state"] == "running", "a hand-made weaver survives a reconcile"
  '';
}
