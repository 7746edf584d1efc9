{
  description = "loom: autonomous coding-agent loops in isolated systemd-nspawn weavers";

  inputs = {
    # The workspace needs rustc >= 1.88 (edition 2024, rust-version in Cargo.toml).
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    sops-nix = {
      url = "github:Mic92/sops-nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, sops-nix }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Only what cargo needs: the workspace and the committed eBPF objects (loom-audit
      # include_bytes! ebpf/audit.bpf.o), so editing a module or a doc does not rebuild loom.
      src = lib.cleanSourceWith {
        name = "loom-source";
        src = ./.;
        filter = path: _type:
          let
            rel = lib.removePrefix (toString ./. + "/") (toString path);
            top = builtins.head (lib.splitString "/" rel);
          in
          lib.elem rel [ "Cargo.toml" "Cargo.lock" "README.md" ]
          || (lib.elem top [ "daemon" "ebpf" ] && builtins.match ".*/target(/.*)?" rel == null);
      };

      loomFor = pkgs: pkgs.rustPlatform.buildRustPackage {
        pname = "loom";
        version = (lib.importTOML ./Cargo.toml).workspace.package.version;
        inherit src;
        cargoLock.lockFile = ./Cargo.lock;
        # The unprivileged tests run in the build. Those that start containers, load eBPF or
        # boot systemd need root, which the sandbox is not: each says "SKIPPED (...)" and why.
        # Nothing is filtered here (no --skip in checkFlags), so a new test runs by default.
        doCheck = true;
        cargoTestFlags = [ "--workspace" ];
        # git: the agent's auto-commits and the CLI's uploads; openssh: the ssh-keygen keys
        # loom-secrets opens; perl and procps: clients of the tests that skip without root.
        nativeCheckInputs = [ pkgs.git pkgs.openssh pkgs.perl pkgs.procps ];
        # HOME: the sandbox's does not exist and git reads its config from there.
        # LOOM_REQUIRE_PRIVILEGED would turn the sandbox's honest skips into failures.
        preCheck = ''
          export HOME="$TMPDIR"
          unset LOOM_REQUIRE_PRIVILEGED
        '';
        postInstall = ''
          install -Dm644 README.md $out/share/doc/loom/README.md
        '';
        meta = {
          description = "Runs coding-agent loops in isolated systemd-nspawn weavers with an LLM key proxy and eBPF audit";
          license = lib.licenses.asl20;
          platforms = lib.platforms.linux;
          mainProgram = "loom";
        };
      };
    in
    {
      packages = forAllSystems (pkgs: rec {
        loom = loomFor pkgs;
        default = loom;
      });

      overlays.default = final: _prev: { loom = loomFor final; };

      nixosModules.loomd = { pkgs, lib, ... }: {
        imports = [ ./modules/loomd.nix ];
        services.loomd.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.loom;
      };
      nixosModules.default = self.nixosModules.loomd;

      nixosConfigurations.example = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          sops-nix.nixosModules.sops
          self.nixosModules.loomd
          ./hosts/example/configuration.nix
        ];
      };

      checks = forAllSystems (pkgs:
        let
          loom = self.packages.${pkgs.stdenv.hostPlatform.system}.loom;
          # The package's vendored dependencies and source, another cargo command, no install.
          cargoCheck = name: command: loom.overrideAttrs (old: {
            pname = "loom-${name}";
            nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              export HOME="$TMPDIR"
              unset LOOM_REQUIRE_PRIVILEGED
              ${command}
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
          });
        in
        {
          inherit loom;
          clippy = cargoCheck "clippy" "cargo clippy --offline --workspace --all-targets -- -D warnings";
          # The unprivileged unit tests on their own (the package build runs every test too);
          # the privileged ones skip with a message, as in the package build.
          unit-tests = cargoCheck "unit-tests" "cargo test --offline --workspace --lib";
        } // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          # Evaluates and builds the whole example system, including `loomd --check-config` on
          # the generated loomd.toml.
          example-system = self.nixosConfigurations.example.config.system.build.toplevel;
          # Boots the example host in QEMU (needs KVM; see the file's comment).
          vm = import ./nix/tests/vm.nix { inherit pkgs self sops-nix; };
        });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
