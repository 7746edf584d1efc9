# services.loomd.weaverImage: what a weaver finds in its /usr on NixOS.
#
# loomd gives every weaver a throwaway root whose /usr is bound read-only from the host
# (image = "host") or from an image directory's usr/, with /nix/store bound too. On NixOS the
# host's /usr holds little more than /usr/bin/env, so a weaver on image = "host" has no
# /bin/sh. This builds an image directory whose usr/bin is a buildEnv of the tools an agent
# needs, and makes it the default image.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  cfg = config.services.loomd.weaverImage;

  tools = pkgs.buildEnv {
    name = "loom-weaver-tools";
    paths = cfg.packages;
    pathsToLink = [ "/bin" ];
  };

  # usr/bin and usr/sbin point into the store, which every weaver has read-only; the skeleton
  # loomd builds links /bin, /sbin, /lib and /lib64 to usr/.
  image = pkgs.runCommand "loom-weaver-image" { } ''
    mkdir -p $out/usr/lib $out/usr/lib64
    ln -s ${tools}/bin $out/usr/bin
    ln -s bin $out/usr/sbin
  '';
in
{
  options.services.loomd.weaverImage = {
    enable = mkEnableOption "a Nix-built weaver image (usr/ with the packages below) as the default weaver image" // {
      default = true;
    };
    packages = mkOption {
      type = types.listOf types.package;
      default = with pkgs; [
        bashInteractive coreutils findutils gnugrep gnused gawk diffutils gnupatch gnutar gzip xz
        git openssh curl less procps which file jq ripgrep gnumake
      ];
      defaultText = literalExpression "[ bashInteractive coreutils findutils gnugrep gnused gawk diffutils gnupatch gnutar gzip xz git openssh curl less procps which file jq ripgrep gnumake ]";
      example = literalExpression "options.services.loomd.weaverImage.packages.default ++ [ pkgs.cargo pkgs.rustc pkgs.gcc ]";
      description = "What is on PATH (/usr/bin) inside every weaver that uses the image.";
    };
    path = mkOption {
      type = types.path;
      readOnly = true;
      default = image;
      defaultText = literalExpression "a runCommand holding usr/";
      description = "The image directory (its usr/ is bound at /usr).";
    };
  };

  config = mkIf (config.services.loomd.enable && cfg.enable) {
    services.loomd.settings.weaver.image = lib.mkDefault "${cfg.path}";
  };
}
