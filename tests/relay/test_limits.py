import pytest

from apps.relay.smtp import client_bucket


@pytest.mark.parametrize(
    "address, bucket",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_client_bucket_counts_ipv6_by_slash_64(address, bucket):
    assert client_bucket(address) == bucket
