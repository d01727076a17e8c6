# plugin_version.sh VERSION (run on the host by zdd): exit 0 and print the version line when
# `docker rollout --version` reports VERSION, 1 otherwise.
out=$(docker rollout --version 2>/dev/null) || { echo "not installed"; exit 1; }
case " $out " in
    *" $1 "*) echo "$out"; exit 0 ;;
    *) echo "$out"; exit 1 ;;
esac
