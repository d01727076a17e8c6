# plugin_version.sh VERSION SHA256 (run on the host by zdd): exit 0, printing the version
# line, when the installed docker-rollout is exactly that file (sha256) and reports VERSION.
file=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-rollout
[ -f "$file" ] || { echo "not installed"; exit 1; }
got=$(sha256sum "$file" | cut -d' ' -f1)
[ "$got" = "$2" ] || { echo "installed file has sha256 $got, not the pinned one"; exit 1; }
out=$(docker rollout --version 2>/dev/null) || { echo "docker rollout --version failed"; exit 1; }
case " $out " in
    *" $1 "*) echo "$out"; exit 0 ;;
    *) echo "$out"; exit 1 ;;
esac
